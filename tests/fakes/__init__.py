"""Fakes for the services the tests cannot run: real HTTP servers written from their docs."""
