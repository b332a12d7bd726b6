"""Dead letters and publisher confirms: the outbox in the ledger, published to ``mm.dead``."""

from __future__ import annotations

import logging
import time

from matchmaker import broker
from matchmaker.ledger import Letter
from matchmaker.scheduler.state import Core

log = logging.getLogger("matchmaker.service")


class Letters(Core):
    """The scheduler's dead letters, and the confirms of what it published."""

    def _outbox(self) -> None:
        """The turn's rejected messages into the ledger's dead-letter outbox, committed
        with the turn; those the outbox did not hold yet are published after the commit."""
        if not self.rejects:
            return
        now = time.time()
        letters = [
            Letter.of(source, body, reason, now, origin)
            for source, body, reason, origin in self.rejects
        ]
        self.rejects.clear()
        fresh = self.ledger.outbox(letters)
        self.letters.extend(fresh)
        self.book.count("rejected", len(fresh))

    def _send_letters(self) -> None:
        """Publish the committed letters to ``mm.dead`` under publisher confirms, each with
        its key as ``message_id``; ``_apply_confirms`` marks the confirmed ones sent."""
        if not self.letters or self.letter_confirms is None:
            return
        publish = self.letter_confirms.publish
        for letter in self.letters:
            properties = broker.dead_letter_properties(
                letter.reason,
                letter.source,
                message_id=letter.key,
                size=letter.size,
                sha256=letter.sha256,
            )
            publish("", broker.DEAD, letter.body, properties, letter.key)
            self.unconfirmed[letter.key] = letter
        self.letters = []

    def _apply_confirms(self) -> None:
        if self.letter_confirms is not None and self.letter_confirms.outstanding():
            sent, refused = self.letter_confirms.confirmed()
            self.ledger.letters_sent(key for key, _ in sent)
            for key, _ in sent:
                self.unconfirmed.pop(key, None)
            for key in refused:  # published again after the next commit
                if (letter := self.unconfirmed.pop(key, None)) is not None:
                    self.letters.append(letter)
        acked, nacked = self.dispatcher.confirmed()
        if nacked:
            log.warning("the broker refused %d dispatches; they go back to pending", len(nacked))
            self.book.undispatched(nacked)
            self.dirty = True
        if acked:
            self.book.assigned(acked)
