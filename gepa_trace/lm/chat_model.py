"""``LiteLLMChatModel``: a LangChain chat model whose calls go through ``gepa_trace.lm.LM``.

    chat = LiteLLMChatModel(model="gepa-sim/task", temperature=0)
    chat.invoke("Who wrote Dracula?").content

    lm = LM("openai/gpt-4.1-mini", budget=budget)       # one door for a whole run:
    chat = LiteLLMChatModel(lm=lm)                      # same semaphore, budget, totals

Contracts:

- Every call is an ``LM.complete`` (retries, concurrency limit, accounting, budget). Given
  ``lm=``, the model shares that LM, and ``api_base``, ``api_key``, ``max_retries``,
  ``timeout``, ``max_concurrency`` and ``budget`` of this object are not used.
- The reply is an ``AIMessage`` with ``usage_metadata`` (input/output/total tokens) and
  ``response_metadata`` (``model_name``, ``finish_reason``, ``cost_usd``, ``price_known``,
  ``attempts``, ``latency_s``).
- LangChain's cache key (``llm_string``) is built from ``_identifying_params``: the model
  string and every parameter that can change the answer (temperature, max_tokens,
  top_p, model_kwargs, the LM's default params, stop); never the endpoint, key, retries
  or limits. ``cache=`` and ``set_llm_cache`` work as for any ``BaseChatModel``.
- Tool calling is not supported: messages are sent as role + text.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, SecretStr, model_validator

from gepa_trace.lm.budget import Budget
from gepa_trace.lm.client import LM, Completion


class LiteLLMChatModel(BaseChatModel):
    """A chat model over litellm, through ``gepa_trace.lm.LM`` (see the module docstring)."""

    model: str = ""
    """litellm model string, e.g. ``openai/gpt-4.1-mini`` or ``gepa-sim/task``."""
    api_base: str | None = None
    api_key: SecretStr | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other parameters sent with every call (and part of the cache key)."""
    max_retries: int = 5
    timeout: float = 60.0
    max_concurrency: int = 8
    role: str = "task"
    budget: Budget | None = Field(default=None, exclude=True)
    lm: LM | None = Field(default=None, exclude=True)
    """A shared LM; built from the fields above when not given."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _bind_lm(self) -> LiteLLMChatModel:
        if self.lm is None:
            if not self.model:
                raise ValueError("LiteLLMChatModel needs model= (a litellm model string) or lm=")
            self.lm = LM(self.model, api_base=self.api_base,
                         api_key=self.api_key.get_secret_value() if self.api_key else None,
                         max_concurrency=self.max_concurrency, max_retries=self.max_retries,
                         timeout=self.timeout, budget=self.budget, role=self.role)
        elif not self.model:
            self.model = self.lm.model
        elif self.model != self.lm.model:
            raise ValueError(f"LiteLLMChatModel model={self.model!r} differs from its "
                             f"lm's model {self.lm.model!r}")
        return self

    @property
    def _llm_type(self) -> str:
        return "litellm"

    @property
    def _params(self) -> dict[str, Any]:
        """Parameters sent with every call: the LM's defaults, then this model's."""
        params: dict[str, Any] = dict(self.lm.default_params) if self.lm else {}
        for key in ("temperature", "max_tokens", "top_p"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        params.update(self.model_kwargs)
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._params}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = self._params | kwargs
        provider = self.model.split("/", 1)[0] if "/" in self.model else "litellm"
        ls = LangSmithParams(ls_provider=provider, ls_model_name=self.model,
                             ls_model_type="chat")
        if params.get("temperature") is not None:
            ls["ls_temperature"] = params["temperature"]
        if params.get("max_tokens") is not None:
            ls["ls_max_tokens"] = params["max_tokens"]
        if stop:
            ls["ls_stop"] = stop
        return ls

    def _request(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        params = {**self._params, **kwargs}
        if stop:
            params["stop"] = stop
        return convert_to_openai_messages(messages), params

    def _result(self, completion: Completion) -> ChatResult:
        usage = UsageMetadata(input_tokens=completion.prompt_tokens,
                              output_tokens=completion.completion_tokens,
                              total_tokens=completion.total_tokens)
        metadata = {"model_name": self.model, "finish_reason": completion.finish_reason,
                    "cost_usd": completion.cost_usd, "price_known": completion.price_known,
                    "attempts": completion.attempts, "latency_s": completion.latency_s}
        message = AIMessage(content=completion.text, usage_metadata=usage,
                            response_metadata=metadata)
        return ChatResult(
            generations=[ChatGeneration(message=message,
                                        generation_info={"finish_reason":
                                                         completion.finish_reason})],
            llm_output={"model_name": self.model,
                        "token_usage": {"prompt_tokens": completion.prompt_tokens,
                                        "completion_tokens": completion.completion_tokens,
                                        "total_tokens": completion.total_tokens}})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        msgs, params = self._request(messages, stop, kwargs)
        return self._result(self.lm.complete(msgs, **params))  # type: ignore[union-attr]

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        msgs, params = self._request(messages, stop, kwargs)
        return self._result(await self.lm.acomplete(msgs, **params))  # type: ignore[union-attr]
