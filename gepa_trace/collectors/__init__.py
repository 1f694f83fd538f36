"""Capture: LangChain callbacks to OTel spans, the SQL span exporter, the OTLP receiver,
and readers of foreign span conventions."""
