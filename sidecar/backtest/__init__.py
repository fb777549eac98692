"""Backtests: ``incident-sla-sidecar backtest``, a response plan replayed on Prometheus' history.

- :mod:`~sidecar.backtest.prometheus`: ``ALERTS`` read with chunked range queries;
- :mod:`~sidecar.backtest.replay`: the history through Alertmanager's emulated
  grouping and the real book (:mod:`sidecar.simulate`), with an assumed
  acknowledgment time;
- :mod:`~sidecar.backtest.report`: the figures, in Markdown or JSON;
- :mod:`~sidecar.backtest.command`: the arguments, the progress bar, the errors.
"""
