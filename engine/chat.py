"""Chat: a list of messages becomes the prompt a language model of scripts, prose or records continues.

An LSTM generator has no chat training; what it knows is the form of its corpus. The chat template
(`ChatTemplate`) maps a conversation onto that form, declared in the artifact's manifest (`chat`) or,
when absent, chosen by the kind of model:

    speakers  word-level scripts whose vocabulary has speaker tags ('moe_szyslak:'): each message is a
              line "TAG content", the user's tag the vocabulary's second most frequent, the assistant's
              the most frequent (moe: homer_simpson: and moe_szyslak:); the reply is the assistant's
              next line, so generation stops at the line break. A message's `name` picks its tag
              ('bart_simpson' -> 'bart_simpson:'), and a request may remap roles (`speakers`).
    lines     other running text: the messages' contents joined with line breaks; the reply is the
              next paragraph (it stops at a blank line).
    record    records models (names): the last message is the start of a record; the reply is the rest
              of that record.

The manifest form: {"style": "speakers", "roles": {"user": "homer_simpson:", "assistant":
"moe_szyslak:"}, "stop": ["\\n"]}, or {"style": "lines"}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import LstmgenError
from .tokenizer import Tokenizer

SPEAKER_TAG = re.compile(r"^[a-z][a-z0-9_]*:$")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class ChatTemplate:
    style: str  # "speakers", "lines" or "record"
    roles: dict[str, str] = field(default_factory=dict)  # speakers: role -> speaker tag
    stop: tuple[str, ...] = ()  # where a reply ends, unless the request gives its own stop strings

    @classmethod
    def for_model(cls, manifest, tokenizer: Tokenizer) -> "ChatTemplate":
        """The manifest's template, or the default for this kind of model."""
        declared = getattr(manifest, "chat", None)
        if declared:
            return cls.from_dict(declared)
        if manifest.records:
            return cls("record")
        tags = [t for t in tokenizer.tokens if SPEAKER_TAG.match(t)]  # most frequent first (the vocabulary's order)
        if tokenizer.level == "word" and len(tags) >= 2:
            return cls("speakers", {"assistant": tags[0], "user": tags[1]}, ("\n",))
        return cls("lines", {}, ("\n\n",))

    @classmethod
    def from_dict(cls, d: dict) -> "ChatTemplate":
        if not isinstance(d, dict) or d.get("style") not in ("speakers", "lines", "record"):
            raise LstmgenError("the manifest's chat template needs a style: 'speakers', 'lines' or 'record'")
        roles = d.get("roles") or {}
        if d["style"] == "speakers" and not {"user", "assistant"} <= set(roles):
            raise LstmgenError("a 'speakers' chat template maps the roles user and assistant to speaker tags")
        return cls(d["style"], dict(roles), tuple(d.get("stop", ("\n",) if d["style"] == "speakers" else ())))

    def to_dict(self) -> dict:
        return {"style": self.style, "roles": dict(self.roles), "stop": list(self.stop)}

    def with_speakers(self, speakers: dict[str, str] | None) -> "ChatTemplate":
        """The template with some roles mapped to other speaker tags (a request's `speakers`)."""
        if not speakers:
            return self
        if self.style != "speakers":
            raise LstmgenError("speakers remap the roles of a script model's chat; this model's chat has none")
        return ChatTemplate(self.style, {**self.roles, **{k: _as_tag(v) for k, v in speakers.items()}}, self.stop)

    def prompt(self, messages: list[Message], tokenizer: Tokenizer) -> str:
        """The text the model continues: the conversation, then the opening of the assistant's reply."""
        if not messages:
            raise LstmgenError("messages must hold at least one message")
        if self.style == "record":
            return messages[-1].content.strip()
        if self.style == "lines":
            return "\n".join(m.content for m in messages) + "\n"
        lines = [self._line(m, tokenizer) for m in messages]
        return "\n".join(lines + [self._tag(Message("assistant", ""), tokenizer)])

    def _line(self, m: Message, tokenizer: Tokenizer) -> str:
        if m.role == "system" and not m.name and "system" not in self.roles:
            return m.content  # no speaker says it: the scene's description, read as a line
        return f"{self._tag(m, tokenizer)} {m.content}"

    def _tag(self, m: Message, tokenizer: Tokenizer) -> str:
        tag = _as_tag(m.name) if m.name else self.roles.get(m.role)
        if tag is None:
            raise LstmgenError(f"no speaker for the role {m.role!r}: give the message a name, or map the role in"
                               " `speakers`")
        if tokenizer.fold(tag) not in tokenizer.index:
            raise LstmgenError(f"{tag!r} is not a speaker this model knows (its vocabulary lacks it); known speakers"
                               f" include {', '.join(t for t in tokenizer.tokens if SPEAKER_TAG.match(t))[:200]}")
        return tag

    def jinja(self) -> str:
        """The same template in Jinja (a tokenizer_config's chat_template, for clients that render prompts
        themselves: lm-evaluation-harness with --apply_chat_template). `prompt` stays the definition."""
        if self.style == "record":
            return "{{ messages[-1]['content'] | trim }}"
        if self.style == "lines":
            return "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        tags = "{" + ", ".join(f"'{r}': '{t}'" for r, t in self.roles.items()) + "}"
        line = ("{% if m.get('name') %}{{ m['name'] | lower | replace(' ', '_') }}{% if not m['name'].endswith(':') %}:"
                "{% endif %} {{ m['content'] }}"
                f"{{% elif m['role'] == 'system' and 'system' not in {tags} %}}{{{{ m['content'] }}}}"
                f"{{% else %}}{{{{ {tags}[m['role']] }}}} {{{{ m['content'] }}}}{{% endif %}}")
        return (f"{{% for m in messages %}}{line}\n{{% endfor %}}"
                f"{{% if add_generation_prompt %}}{self.roles['assistant']}{{% endif %}}")

    def reply(self, written: str) -> str:
        """The assistant's message from what the model wrote after the prompt."""
        return written.strip() if self.style != "record" else written


def _as_tag(name: str) -> str:
    tag = name.strip().lower().replace(" ", "_")
    return tag if tag.endswith(":") else tag + ":"
