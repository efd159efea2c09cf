"""What the model sees for one turn, decided once.

:func:`build_turn` is the one place that turns a conversation (its stored messages, their attachments,
the settings and the model's limits) into the messages sent to the model. It returns the decision
whole: the messages, the history it left out, whether documents went in whole or by retrieval (and
why), the passages used, and the images it could not send. The prompt, the document chip's badge,
the context meter and "what the model saw" all read this one decision.

It is pure: token counting, chunk access and image loading are passed in. It runs where the model's
tokenizer lives (the inference thread), never on the GUI thread.

Budgets, in the model's own tokens:

- ``usable`` = the context size minus the room kept for the answer (:func:`reply_reserve`).
- Documents go in **whole** when the conversation rendered with them still fits ``usable`` with a
  question of up to :data:`QUESTION_ALLOWANCE` tokens, and they are no longer than the
  whole-document limit (``TurnRequest.whole_limit``, Settings → Documents: long inputs are read less
  well, docs/benchmarks.md). The allowance makes the decision the same
  before the question is typed (the chip, previewed with an empty draft) and after it is sent, for
  any question up to that length.
- Otherwise the best passages for the question go in (**retrieval**), with at least
  :data:`RETRIEVAL_SHARE` of ``usable`` for them: older history gives way to passages, never the
  question itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app.core.context import MessageTooLongError, fit_messages, reply_reserve
from app.core.retrieval import DocumentChunks, compose_document_context
from app.core.store import AttachmentState, MessageStatus, StoredMessage
from app.core.tools import TOOL_ROLE, result_for_model
from app.core.types import ChatMessage, DocumentMode, Role

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from app.core.chunking import Chunk
    from app.core.retrieval import Retrieval, RetrievedChunk
    from app.core.store import Attachment

log = logging.getLogger(__name__)

MAX_SOURCES_KEPT = 40
"""Retrieved passages remembered per answer (citations, "what the model saw")."""
QUESTION_ALLOWANCE = 256
"""Tokens kept for the question when deciding whether documents go in whole."""
RETRIEVAL_SHARE = 0.5
"""Passages may take at least this share of the usable context (older history gives way)."""
DRAFT_ID = 0
"""The message id of a question not sent yet (previews)."""


class DocumentSource(Protocol):
    """Where the chunks of attached documents live: :class:`app.core.retrieval.ChunkIndex` (keywords)
    or :class:`app.core.retrieval.HybridSource` (keywords and meaning)."""

    def chunks(self, doc_id: int) -> list[Chunk]: ...

    def search(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> list[RetrievedChunk]: ...

    def retrieve(
        self, question: str, doc_ids: Sequence[int], budget_tokens: int, neighbours: int = 1
    ) -> Retrieval: ...


@dataclass(frozen=True)
class ModelLimits:
    """What the turn builder needs to know of the loaded model."""

    n_ctx: int
    has_vision: bool
    count_chat_tokens: Callable[[Sequence[ChatMessage]], int]
    count_text_tokens: Callable[[str], int]
    n_ctx_max: int = 0  # the largest context the model allows (its trained size); 0: unknown


@dataclass(frozen=True)
class TurnRequest:
    """A conversation as the turn builder sees it: plain data, built on the GUI thread.

    ``messages`` are the stored messages, oldest first; the last user message is the question.
    For a preview (the composer's chip, the context meter), ``draft`` is the question not sent yet
    (often empty) and ``pending`` the ready attachments waiting in the composer.
    """

    messages: tuple[StoredMessage, ...]
    attachments: Mapping[int, tuple[Attachment, ...]]
    system_prompt: str
    max_tokens: int
    draft: str | None = None
    pending: tuple[Attachment, ...] = ()
    whole_limit: int = 0  # documents longer than this go in by passages (0: no limit)

    @classmethod
    def for_question(
        cls,
        question: str,
        *,
        system_prompt: str = "",
        max_tokens: int = 2048,
        attachments: tuple[Attachment, ...] = (),
    ) -> TurnRequest:
        """A conversation of one question (the self-test, benchmarks), with its ``attachments``."""
        message = StoredMessage(1, 0, Role.USER.value, question, 0.0, "", {}, {}, MessageStatus.COMPLETE)
        return cls((message,), {1: attachments} if attachments else {}, system_prompt, max_tokens)


@dataclass(frozen=True)
class DocumentDecision:
    """How the documents of a turn reach the model, and why."""

    mode: DocumentMode
    reason: str  # one sentence for the chip's tooltip
    tokens: int  # tokens of the document part of the prompt
    doc_ids: tuple[int, ...]
    host_message_id: int  # the user message whose content carries the documents
    sources: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Turn:
    """The decision: what is sent, what was left out and why."""

    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    reserve: int
    dropped: int = 0  # history messages left out (oldest first)
    documents: DocumentDecision | None = None
    images_left_out: int = 0  # pictures not sent: the model has no vision
    message_ids: tuple[int, ...] = field(default=(), compare=False)


def build_turn(
    request: TurnRequest,
    model: ModelLimits,
    documents: DocumentSource | None,
    load_image: Callable[[Attachment], str | None],
) -> Turn:
    """Decide what the model sees (see the module docstring). Raises
    :class:`app.core.context.MessageTooLongError` when even the question alone does not fit."""
    reserve = reply_reserve(model.n_ctx, request.max_tokens)
    rows, attachments = _rows(request)
    system = request.system_prompt.strip()
    head = [ChatMessage.system(system)] if system else []

    images_left_out = 0
    base: list[tuple[int, ChatMessage]] = []
    for m in rows:
        images: tuple[str, ...] = ()
        if m.role == Role.USER.value:
            pictures = [a for a in attachments.get(m.id, ()) if a.kind == "image"]
            if model.has_vision:
                images = tuple(uri for a in pictures if (uri := load_image(a)) is not None)
            else:
                images_left_out += len(pictures)
        base.append((m.id, ChatMessage(m.role, m.content, images)))
        record = m.stats.get("tool_call") if m.role == Role.ASSISTANT.value and m.stats else None
        result = result_for_model(record) if isinstance(record, dict) else None
        if result is not None:  # the call's result (or its denial) follows the answer that made it
            base.append((m.id, ChatMessage(TOOL_ROLE, result)))

    decision = None
    docs = [
        (mid, a)
        for mid, _msg in base
        for a in attachments.get(mid, ())
        if a.kind == "document" and a.meta.get("state") == AttachmentState.READY
    ]
    if docs and documents is not None and base:
        decision, text = _decide_documents(head, base, docs, model, reserve, documents, request.whole_limit)
        if text:
            base = [
                (mid, ChatMessage(msg.role, f"{text}\n\n{msg.content}", msg.images))
                if mid == decision.host_message_id
                else (mid, msg)
                for mid, msg in base
            ]
    try:
        fitted = fit_messages(
            head + [msg for _mid, msg in base], model.count_chat_tokens, model.n_ctx, reserve
        )
    except MessageTooLongError as exc:  # never advise a larger context the model does not allow
        can_grow = not model.n_ctx_max or model.n_ctx < model.n_ctx_max
        raise MessageTooLongError(exc.needed, exc.available, can_grow=can_grow) from None
    return Turn(
        fitted.messages,
        fitted.prompt_tokens,
        reserve,
        fitted.dropped,
        decision,
        images_left_out,
        tuple(mid for mid, _msg in base),
    )


def _rows(request: TurnRequest) -> tuple[list[StoredMessage], dict[int, tuple[Attachment, ...]]]:
    """The messages the model sees (answers being written or empty are not), plus the draft."""
    rows = [
        m
        for m in request.messages
        if m.role == Role.USER.value
        or (m.role == Role.ASSISTANT.value and m.status != MessageStatus.STREAMING and m.content.strip())
    ]
    attachments = dict(request.attachments)
    if request.draft is not None:
        draft = StoredMessage(
            DRAFT_ID, 0, Role.USER.value, request.draft, 0.0, "", {}, {}, MessageStatus.COMPLETE
        )
        rows.append(draft)
        attachments[DRAFT_ID] = tuple(
            a for a in request.pending if a.meta.get("state") == AttachmentState.READY
        )
    return rows, attachments


def _decide_documents(
    head: list[ChatMessage],
    base: list[tuple[int, ChatMessage]],
    docs: list[tuple[int, Attachment]],
    model: ModelLimits,
    reserve: int,
    source: DocumentSource,
    whole_limit: int = 0,
) -> tuple[DocumentDecision, str]:
    usable = model.n_ctx - reserve
    question = next((msg.content for _mid, msg in reversed(base) if msg.role == Role.USER.value), "")
    question_tokens = model.count_text_tokens(question) if question else 0
    base_tokens = model.count_chat_tokens(head + [msg for _mid, msg in base])
    # the documents join the question with a blank line; a tokenizer may merge across the join
    usable -= model.count_text_tokens("\n\n") + 1
    whole_budget = usable - base_tokens - max(0, QUESTION_ALLOWANCE - question_tokens)
    minimal = model.count_chat_tokens([*head, base[-1][1]])
    retrieval_budget = max(usable - base_tokens, min(usable - minimal, int(usable * RETRIEVAL_SHARE)))
    chunks = [DocumentChunks(a.id, a.name, tuple(source.chunks(a.id))) for _mid, a in docs]
    total = sum(c.tokens for d in chunks for c in d.chunks)
    fits = max(0, whole_budget)
    over_limit = 0 < whole_limit < fits
    composed = compose_document_context(
        chunks,
        question,
        min(fits, whole_limit) if over_limit else fits,
        count_tokens=model.count_text_tokens,
        index=source,
        retrieval_budget=max(0, retrieval_budget),
    )
    mode = composed.mode
    if mode is DocumentMode.WHOLE:
        host = docs[0][0]  # a stable place: later turns reuse the KV cache
        reason = f"read whole: {composed.tokens:,} tokens"
    else:
        host = base[-1][0]  # the passages change with each question and go with it
        if over_limit and total <= fits:
            reason = f"passages: {total:,} tokens is over the {whole_limit:,} you read whole (Settings)"
        else:
            reason = f"passages: does not fit the {model.n_ctx:,}-token context"
        if composed.note:
            reason += ". " + composed.note
        if composed.covered is False:
            reason += " No passage matches this question closely: the model is told so."
    sources = tuple(
        {"doc": p.doc_name, "anchor": p.anchor, "page": p.page, "text": p.text[:4000], "found_by": p.found_by}
        for p in composed.citations[:MAX_SOURCES_KEPT]
    )
    doc_ids = tuple(a.id for _mid, a in docs)
    log.debug("documents %s: %s, %d tokens", doc_ids, mode.value, composed.tokens)
    return DocumentDecision(mode, reason, composed.tokens, doc_ids, host, sources), composed.text
