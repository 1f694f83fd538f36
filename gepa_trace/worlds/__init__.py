"""Simulated worlds other than the demo, for measuring the optimizer on tasks of other
kinds: ``gepa_trace.worlds.receipts``, the expense desk (extraction then formatting);
and ``gepa_trace.worlds.users``, the simulated users' feedback every world's traffic
(the demo's too) records.

Each world holds its own answer key. Nothing outside this package and
``gepa_trace.lm.sim`` imports it: the optimizer sees a world only through the metric a
user passes or the feedback its simulated users recorded.
"""
