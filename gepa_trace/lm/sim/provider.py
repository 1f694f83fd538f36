"""The ``gepa-sim`` litellm custom provider: simulated models behind ``litellm.completion``.

Only ``gepa_trace.lm.sim.register()`` should call ``install()``. Injected faults are
raised as litellm's own exceptions (RateLimitError carrying Retry-After, Timeout,
InternalServerError), so callers exercise their real error handling; an unknown model is
litellm's NotFoundError and a behaviour that raises is a BadRequestError (its cause
chained), which no caller should retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from gepa_trace.lm import sim


def _error(exc: Exception, model: str) -> Exception:
    """litellm's exception for a simulated failure."""
    import httpx

    if isinstance(exc, sim.UnknownSimModel):
        return litellm.NotFoundError(message=str(exc), model=model, llm_provider=sim.PROVIDER)
    if isinstance(exc, sim.ConfigError):
        return litellm.BadRequestError(message=str(exc), model=model, llm_provider=sim.PROVIDER)
    if not isinstance(exc, sim.SimFault):
        return exc
    if exc.kind == "rate_limit":
        headers = {"retry-after": f"{exc.retry_after_s:g}",
                   "retry-after-ms": f"{exc.retry_after_s * 1000:g}"}
        request = httpx.Request("POST", "http://gepa-sim.invalid/v1/chat/completions")
        return litellm.RateLimitError(message=str(exc), llm_provider=sim.PROVIDER, model=model,
                                      headers=headers,
                                      response=httpx.Response(429, headers=headers,
                                                              request=request))
    if exc.kind == "timeout":
        return litellm.Timeout(message=str(exc), model=model, llm_provider=sim.PROVIDER)
    return litellm.InternalServerError(message=str(exc), llm_provider=sim.PROVIDER, model=model)


def _fill(response: ModelResponse, reply: sim.SimReply) -> ModelResponse:
    message = response.choices[0].message  # type: ignore[union-attr]
    message.content = reply.text
    # A truncated generation is what "length" means; callers may look at it.
    response.choices[0].finish_reason = "length" if reply.malformed else "stop"
    response.model = reply.model
    response.usage = litellm.Usage(  # type: ignore[attr-defined]
        prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
        total_tokens=reply.prompt_tokens + reply.completion_tokens)
    # The provider states what the reply cost, as some gateways do; litellm then takes
    # that figure instead of looking the model up in its price map on every call.
    response._hidden_params["response_cost"] = (
        reply.prompt_tokens * sim.PRICE_PER_TOKEN["input"]
        + reply.completion_tokens * sim.PRICE_PER_TOKEN["output"])
    return response


def _chunks(reply: sim.SimReply) -> Iterator[GenericStreamingChunk]:
    words = reply.text.split(" ")
    for i, word in enumerate(words):
        last = i == len(words) - 1
        yield GenericStreamingChunk(
            text=word if last else word + " ", is_finished=last, index=0, tool_use=None,
            finish_reason=("length" if reply.malformed else "stop") if last else "",
            usage={"prompt_tokens": reply.prompt_tokens,
                   "completion_tokens": reply.completion_tokens,
                   "total_tokens": reply.prompt_tokens + reply.completion_tokens}
            if last else None)


class SimProvider(CustomLLM):
    """Serves ``gepa-sim/<model>[?options]`` in process through ``gepa_trace.lm.sim.generate``."""

    def _serve(self, model: str, messages: list, sleep: bool = True) -> sim.SimReply:
        try:
            return sim.generate(model, messages, sleep=sleep)
        except (sim.SimFault, sim.ConfigError) as exc:
            raise _error(exc, model) from None
        except Exception as exc:
            # A bug in a behaviour module fails the same way every time: litellm would
            # call it a connection error, which callers retry; a bad request they do not.
            raise litellm.BadRequestError(
                message=f"simulated model {sim.PREFIX}{model} failed: "
                        f"{type(exc).__name__}: {exc}",
                model=model, llm_provider=sim.PROVIDER) from exc

    async def _aserve(self, model: str, messages: list) -> sim.SimReply:
        try:
            _, opts = sim.resolve(model)
        except sim.ConfigError as exc:
            raise _error(exc, model) from None
        if opts.latency_ms > 0:
            await asyncio.sleep(opts.latency_ms / 1000.0)
        return self._serve(model, messages, sleep=False)

    def completion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,
                   model_response: ModelResponse, *args: Any, **kwargs: Any) -> ModelResponse:
        return _fill(model_response, self._serve(model, messages))

    async def acompletion(self, model: str, messages: list, api_base: str,
                          custom_prompt_dict: dict, model_response: ModelResponse,
                          *args: Any, **kwargs: Any) -> ModelResponse:
        return _fill(model_response, await self._aserve(model, messages))

    def streaming(self, model: str, messages: list, *args: Any,
                  **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        yield from _chunks(self._serve(model, messages))

    async def astreaming(self, model: str, messages: list, *args: Any,
                         **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:
        for chunk in _chunks(await self._aserve(model, messages)):
            yield chunk


def install() -> None:
    """Add the provider to ``litellm.custom_provider_map`` (once) and price the sim models."""
    if not any(p.get("provider") == sim.PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [*litellm.custom_provider_map,
                                       {"provider": sim.PROVIDER, "custom_handler": SimProvider()}]
    # litellm runs this at every call; run it now so prices resolve before the first call.
    setup = getattr(getattr(litellm, "utils", None), "custom_llm_setup", None)
    if setup is not None:
        setup()
    # Nominal prices (simulated; those of gpt-4.1-mini) so dollar budgets work offline.
    # The cache prices are given only to keep litellm from warning that they are missing.
    litellm.register_model({
        sim.PREFIX + name: {
            "input_cost_per_token": sim.PRICE_PER_TOKEN["input"],
            "output_cost_per_token": sim.PRICE_PER_TOKEN["output"],
            "cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0,
            "litellm_provider": sim.PROVIDER, "mode": "chat",
        } for name in sim.MODELS})
