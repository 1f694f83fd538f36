"""The web UI (`gepa-trace ui`): browse traces, review examples, runs and components,
and promote prompts, on Starlette with Jinja2 templates (autoescaped).

Pages work without JavaScript; one small script, shipped in ``static/``, polls a
running optimization's progress. Nothing is loaded from outside the package. Routes
call the library (``store.queries``, ``replay.dataset``, ``prompts.registry``, ...);
they hold no SQL of their own. ``security`` says who may use it and how forms are
checked; ``create_app`` builds the application.
"""

from gepa_trace.ui.app import UiSettings, create_app

__all__ = ["UiSettings", "create_app"]
