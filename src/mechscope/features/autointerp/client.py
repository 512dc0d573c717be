"""The one seam through which autointerp talks to a language model: chat messages in, text out.

Two backends:

- `OpenAIChat`: any OpenAI-compatible endpoint (`POST {base_url}/chat/completions`), over httpx.
  Base URL, model and key come from arguments or the environment (`MECHSCOPE_LLM_BASE_URL` or
  `OPENAI_BASE_URL`, `MECHSCOPE_LLM_MODEL`, `OPENAI_API_KEY`).
- `LocalChat`: an in-process Hugging Face model (the default model or Gemma 3 270M), greedy
  decoding with the tokenizer's chat template; runs offline.

`make_client("openai:gpt-4o-mini")`, `make_client("local")` or `make_client("local:gemma3-270m")`.

Example:
    >>> client = make_client("local")                                   # doctest: +SKIP
    >>> client.chat([{"role": "user", "content": "Say hi"}], max_tokens=5)  # doctest: +SKIP
    'Hi!'
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from mechscope.core.errors import MechscopeError

Messages = list[dict[str, str]]


class LanguageModelError(MechscopeError):
    """The language model could not be reached or gave an unusable answer.

    Example:
        >>> try:
        ...     make_client("claude")
        ... except LanguageModelError as err:
        ...     print(err)
        unknown language model 'claude': use openai:MODEL, local or local:MODEL
    """


class ChatModel(Protocol):
    """What autointerp needs from a language model: a `name` and a `chat` method.

    Example:
        >>> class Echo:                                    # any object with these two members is a ChatModel
        ...     name = "echo"
        ...     def chat(self, messages, max_tokens=256):
        ...         return messages[-1]["content"][:max_tokens]
        >>> model: ChatModel = Echo()
        >>> model.chat([{"role": "user", "content": "1: yes"}])
        '1: yes'
    """

    name: str

    def chat(self, messages: Messages, max_tokens: int = 256) -> str:
        """The assistant's reply to `messages` (greedy / temperature 0)."""
        ...


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint.

    Example:
        >>> client = OpenAIChat("gpt-4o-mini", base_url="http://localhost:8000/v1/", api_key="")
        >>> client.name, client.base_url
        ('openai:gpt-4o-mini', 'http://localhost:8000/v1')
        >>> client.chat([{"role": "user", "content": "Say hi"}], max_tokens=5)   # doctest: +SKIP
        'Hi!'
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        import httpx

        self.model = model or os.environ.get("MECHSCOPE_LLM_MODEL")
        base = base_url or os.environ.get("MECHSCOPE_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not self.model or not base:
            raise LanguageModelError("an OpenAI-compatible endpoint needs a model and a base URL (--llm openai:MODEL "
                                     "--base-url URL, or MECHSCOPE_LLM_MODEL / MECHSCOPE_LLM_BASE_URL)")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = base.rstrip("/")
        self.name = f"openai:{self.model}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def chat(self, messages: Messages, max_tokens: int = 256) -> str:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        try:
            response = self._http.post("/chat/completions", json=body)
        except httpx.HTTPError as err:
            raise LanguageModelError(f"cannot reach {self.base_url}: {err}") from err
        if response.status_code != 200:
            raise LanguageModelError(f"{self.base_url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            return str(response.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise LanguageModelError(f"{self.base_url} sent no chat completion: {response.text[:200]}") from err


class LocalChat:
    """A Hugging Face causal LM in this process (a `HookedModel` or a name for `load_model`), greedy decoding.

    Example:
        >>> client = LocalChat("gemma3-270m")                                    # doctest: +SKIP
        >>> client.name                                                          # doctest: +SKIP
        'local:gemma3-270m'
        >>> client.chat([{"role": "user", "content": "Say hi"}], max_tokens=5)   # doctest: +SKIP
        'Hi!'
    """

    def __init__(self, model: Any = None) -> None:
        if model is None or isinstance(model, str):
            from mechscope.core.loading import load_model

            model = load_model(model)
        self.model = model
        self.name = f"local:{model.cfg.name}"

    @torch.no_grad()
    def chat(self, messages: Messages, max_tokens: int = 256) -> str:
        tok = self.model.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
            ids = tok(text, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        out = self.model.hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_client(spec: str = "local", base_url: str | None = None, api_key: str | None = None) -> ChatModel:
    """A chat client from a spec: `openai:MODEL` (or `openai`, model from the environment), `local` or `local:NAME`.

    Example:
        >>> make_client("openai:gpt-4o-mini", base_url="http://localhost:8000/v1").name
        'openai:gpt-4o-mini'
        >>> make_client("local").name                                            # doctest: +SKIP
        'local:smollm2-135m'
    """
    kind, _, name = spec.partition(":")
    if kind == "openai":
        return OpenAIChat(name or None, base_url, api_key)
    if kind == "local":
        return LocalChat(name or None)
    raise LanguageModelError(f"unknown language model {spec!r}: use openai:MODEL, local or local:MODEL")
