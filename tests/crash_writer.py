"""A real writer for the crash tests: ``python tests/crash_writer.py DB SEED``.

Writes conversations the way :class:`mmchat.chat.ChatSession` does (a user message, then the
assistant's reply, each one committed transaction through :class:`mmchat.store.ConversationStore`,
some with an image attachment) as fast as it can, forever. After each ``add_message`` returns it
prints ``ack <message id> <sha256 of content + attachment bytes>`` and flushes, so every line the
test reads is a message the store reported as committed. The test kills it with SIGKILL.
"""

import hashlib
import random
import sys

from mmchat.store import Attachment, ConversationStore

MESSAGES_PER_CONVERSATION = 20
IMAGE_EVERY = 7  # every 7th message carries an attachment
ATTACHMENT_BYTES = (1_000, 40_000)  # a range, so some writes span many pages


def digest(content: str, attachments) -> str:
    h = hashlib.sha256(content.encode())
    for a in attachments:
        h.update(a.data)
    return h.hexdigest()


def main(db_path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = ConversationStore(db_path)
    print("ready", flush=True)
    n = 0
    conversation = store.create_conversation().id
    while True:
        n += 1
        if n % MESSAGES_PER_CONVERSATION == 0:
            conversation = store.create_conversation().id
        role = "user" if n % 2 else "assistant"
        content = f"{seed}-{n} " + " ".join(rng.choice(["alpha", "beta", "gamma", "δέλτα", "🙂"])
                                           for _ in range(rng.randint(1, 400)))
        attachments = []
        if n % IMAGE_EVERY == 0:
            attachments = [Attachment("image", "image/png", rng.randbytes(rng.randint(*ATTACHMENT_BYTES)))]
        message = store.add_message(conversation, role, content, attachments=attachments)
        print(f"ack {message.id} {digest(content, attachments)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
