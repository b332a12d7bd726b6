"""Dead letters and publisher confirms: the outbox in the ledger, published to ``mm.dead``."""

from __future__ import annotations

import logging

from matchmaker.ledger import Letter
from matchmaker.scheduler.state import Core
from matchmaker.scheduler.transport import Polled

log = logging.getLogger("matchmaker.service")


class Letters(Core):
    """The scheduler's dead letters, and the confirms of what it published."""

    def _outbox(self) -> None:
        """The turn's rejected messages into the ledger's dead-letter outbox, committed
        with the turn; those the outbox did not hold yet are published after the commit."""
        if not self.rejects:
            return
        now = self.clock.time()
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
        if not self.letters or self.transport is None:
            return
        for letter in self.letters:
            self.transport.letter(letter)
            self.unconfirmed[letter.key] = letter
        self.letters = []

    def _apply_confirms(self, polled: Polled) -> None:
        if polled.letters_sent:
            self.ledger.letters_sent(polled.letters_sent)
            self.metrics.dead_letters.inc(len(polled.letters_sent))
            for key in polled.letters_sent:
                self.unconfirmed.pop(key, None)
        for key in polled.letters_refused:  # published again after the next commit
            if (letter := self.unconfirmed.pop(key, None)) is not None:
                self.letters.append(letter)
        if polled.undispatched:
            log.warning(
                "the broker refused %d dispatches; they go back to pending",
                len(polled.undispatched),
            )
            self.book.undispatched(polled.undispatched)
            self.dirty = True
        if polled.dispatched:
            self.book.assigned(polled.dispatched)
