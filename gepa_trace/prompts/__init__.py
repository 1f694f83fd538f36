"""Prompt templates of agent components, their versions, and prompt files."""

from gepa_trace.prompts.promptset import FILE_FORMAT, PromptSet, PromptVersion
from gepa_trace.prompts.templates import (
    COMPONENT_KEY,
    VERSION_KEY,
    bind_component,
    component,
    messages_of_template,
    normalize_messages,
    template_variables,
    template_version,
    to_chat_prompt,
)

__all__ = [
    "COMPONENT_KEY",
    "FILE_FORMAT",
    "VERSION_KEY",
    "PromptSet",
    "PromptVersion",
    "bind_component",
    "component",
    "messages_of_template",
    "normalize_messages",
    "template_variables",
    "template_version",
    "to_chat_prompt",
]
