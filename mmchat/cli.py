"""The ``mmchat`` command: the desktop app by default, plus terminal chat and model tools.

Expected trouble (:class:`MMChatError`) is printed as one message without a traceback and exits 1.
Heavy imports happen inside the commands, so ``mmchat --version`` and ``--help`` are instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import traceback
from pathlib import Path

from mmchat import __version__
from mmchat.errors import MMChatError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 70  # EX_SOFTWARE: an unexpected error, with a crash report written
# mmchat.fusion.PROJECTORS' names, spelled out so building the parser does not import torch
PROJECTOR_NAMES = ("mlp2x_gelu", "linear", "slots_mlp", "slots_attn")
AUDIO_PROJECTOR_NAMES = (*PROJECTOR_NAMES, "ctc_mlp")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    command = getattr(args, "func", None) or _cmd_app
    try:
        return command(args) or 0
    except MMChatError as exc:
        print(f"mmchat: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: keep a report for the user to send, say where it is
        from mmchat.crash_report import write_report

        report = write_report(type(exc), exc, exc.__traceback__)
        where = f"A crash report is in {report}; please include it" if report else "Run again with -v and include the output"
        print(f"mmchat: unexpected error ({type(exc).__name__}: {exc}). {where} when you report this bug.",
              file=sys.stderr)
        if args.verbose:
            traceback.print_exception(exc)
        return EXIT_BUG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmchat", description="Local multimodal chat (text, images, voice), offline.")
    parser.add_argument("--version", action="version", version=f"mmchat {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    app = sub.add_parser("app", help="open the desktop app (the default)")
    app.add_argument("--screenshot", type=Path, metavar="PNG",
                     help="render the window with your most recent conversation to PNG and exit (no models load)")
    app.add_argument("--demo", action="store_true",
                     help="with --screenshot: a built-in demo conversation (scripted replies) instead")
    app.set_defaults(func=_cmd_app)

    chat = sub.add_parser("chat", help="chat in the terminal")
    chat.add_argument("--once", metavar="TEXT", help="send one message, print the reply, exit")
    chat.add_argument("--image", action="append", default=[], type=Path, metavar="FILE", help="attach an image (repeatable)")
    chat.add_argument("--audio", type=Path, metavar="FILE", help="attach a voice message (WAV/FLAC/OGG)")
    chat.add_argument("--model", metavar="NAME", help="LLM from `mmchat models list`")
    chat.add_argument("--server", metavar="URL",
                      help="chat on an OpenAI-compatible server (llama.cpp, vLLM, Ollama) at URL; API key from "
                           "$MMCHAT_API_KEY or the system keyring (`mmchat server key URL`)")
    chat.add_argument("--server-model", metavar="NAME", help="the server's model (default: the first it lists)")
    where = chat.add_mutually_exclusive_group()
    where.add_argument("--continue", dest="resume", action="store_true", help="continue the most recent conversation")
    where.add_argument("--conversation", type=int, metavar="ID", help="continue conversation ID")
    where.add_argument("--temporary", action="store_true", help="store nothing on disk")
    chat.add_argument("--max-tokens", type=int, default=512, metavar="N")
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--seed", type=int)
    chat.add_argument("--threads", type=int, metavar="N",
                      help="CPU threads for the LLM (default: $MMCHAT_LLM_THREADS, else one per physical core)")
    chat.add_argument("--remember", action="store_true",
                      help="store facts you state about yourself without asking (flagged text still waits)")
    chat.set_defaults(func=_cmd_chat)

    tr = sub.add_parser("transcribe", help="print the transcript of an audio file")
    tr.add_argument("file", type=Path)
    tr.add_argument("--language", default="en", help="spoken language code, or 'auto'")
    tr.add_argument("--model", metavar="NAME", help="speech model (default whisper-base)")
    tr.set_defaults(func=_cmd_transcribe)

    models = sub.add_parser("models", help="list, fetch or verify models")
    msub = models.add_subparsers(title="actions", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="every model, its role, source, licence and state")
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=_cmd_models_list)
    mf = msub.add_parser("fetch", help="download an optional model (needs internet)")
    mf.add_argument("name")
    mf.set_defaults(func=_cmd_models_fetch)
    mv = msub.add_parser("verify", help="check bundled model files against their sha256")
    mv.add_argument("name", nargs="?")
    mv.set_defaults(func=_cmd_models_verify)

    server = sub.add_parser("server", help="the chat server's API key, kept in the system keyring")
    ssub = server.add_subparsers(title="actions", metavar="ACTION", required=True)
    sk = ssub.add_parser("key", help="store the API key for the server at URL (asked for, not echoed)")
    sk.add_argument("url")
    sk.set_defaults(func=_cmd_server_key)

    doctor = sub.add_parser("doctor", help="what is installed, where data lives, what works here")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=_cmd_doctor)

    data = sub.add_parser("make-fusion-data", help="generate procedural image/speech training data")
    data.add_argument("--out", type=Path, required=True, metavar="DIR")
    data.add_argument("--images", type=int, default=2000)
    data.add_argument("--speech", type=int, default=600)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--split", choices=("train", "heldout"), default="train")
    data.set_defaults(func=_cmd_make_fusion_data)

    train = sub.add_parser("train-fusion", help="train the image/audio fusion projectors for an LLM")
    train.add_argument("--model", metavar="NAME", help="LLM to train for (default: the default LLM)")
    train.add_argument("--image-encoder", metavar="NAME", help="image encoder to train for (default: the default)")
    train.add_argument("--data", type=Path, metavar="DIR", help="your own samples.jsonl dataset (default: generated)")
    train.add_argument("--heldout", type=Path, metavar="DIR", help="held-out dataset for the evaluation")
    train.add_argument("--out", type=Path, metavar="DIR", help="checkpoint folder (default: your data folder)")
    train.add_argument("--steps", type=int, help="answer-loss steps after the alignment (default 0)")
    train.add_argument("--batch-size", type=int, help="examples per step (default 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 5e-3)")
    train.add_argument("--align-steps", type=int,
                       help="alignment steps first, teaching media tokens to spell their caption or transcript "
                            "in the LLM's embeddings (default 4500; 0: none)")
    train.add_argument("--image-projector", choices=PROJECTOR_NAMES,
                       help="per-cell tokens (mlp2x_gelu, linear) or whole-image tokens that learn to spell the "
                            "caption first (slots_mlp, slots_attn); default slots_mlp")
    train.add_argument("--audio-projector", choices=AUDIO_PROJECTOR_NAMES,
                       help="per-frame-stack tokens (mlp2x_gelu, linear), the same trained with CTC to spell the "
                            "transcript, blank stacks dropped (ctc_mlp), or whole-clip tokens that learn to spell "
                            "the transcript first (slots_mlp, slots_attn); default ctc_mlp")
    train.add_argument("--image-grid", type=int, choices=range(1, 8), metavar="K",
                       help="CLIP's 7×7 patches average-pooled to K×K cells (default 7: every patch)")
    train.add_argument("--image-slots", type=int, help="tokens per image of a whole-image projector (default 32)")
    train.add_argument("--image-stats", action=argparse.BooleanOptionalAction,
                       help="standardise CLIP features by the training images' per-dimension mean and std "
                            "(default on)")
    train.add_argument("--audio-stretch", type=float, metavar="F",
                       help="CTC alignment: resample each clip's Whisper frames in time by a factor within 1 ± F "
                            "(default 0: off; see assets/fusion/README.md)")
    train.add_argument("--audio-time-masks", type=int, metavar="N",
                       help="CTC alignment: zero N spans of up to 4 frames of each clip (default 0)")
    train.add_argument("--audio-feature-masks", type=int, metavar="N",
                       help="CTC alignment: zero N bands of up to 48 feature dimensions of each clip (default 0)")
    train.add_argument("--train", choices=("all", "weights"),
                       help="what the answer-loss steps train: the projectors and the per-modality weights "
                            "(all, default), or only the weights (the aligned projectors stay as they are)")
    train.add_argument("--photos", type=int, default=0, metavar="N",
                       help="the recipe for a pretrained image encoder: drawings in many shades and on pale "
                            "backgrounds, plus N augmented real photos captioned \"a photo\" (default 0: the "
                            "default generated data)")
    train.add_argument("--audio-from", type=Path, metavar="DIR",
                       help="take this checkpoint's audio branch as it is and align only the image branch")
    train.add_argument("--start-from", type=Path, metavar="DIR",
                       help="go on from this checkpoint as it is (no alignment; with --train weights: retrain "
                            "only the per-modality weights)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--images", type=int, default=8000, help="generated training images")
    train.add_argument("--speech", type=int, default=1200, help="generated training clips")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if a saved state exists")
    train.add_argument("--eval-limit", type=int, default=40, help="held-out questions per kind (0: no eval)")
    train.set_defaults(func=_cmd_train_fusion)

    ev = sub.add_parser("eval-fusion", help="held-out loss/accuracy of a fusion checkpoint vs. controls")
    ev.add_argument("--model", metavar="NAME")
    ev.add_argument("--image-encoder", metavar="NAME", help="image encoder (default: the default)")
    ev.add_argument("--checkpoint", type=Path, metavar="DIR", help="default: the one the chat uses")
    ev.add_argument("--data", type=Path, metavar="DIR", help="held-out dataset (default: generated)")
    ev.add_argument("--limit", type=int, default=60, help="questions per kind for the accuracy")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_eval_fusion)

    vision = sub.add_parser("eval-vision", help="the shipped models on real photos, screenshots and drawings")
    vision.add_argument("--set", dest="sets", default="photos,screenshots,drawings",
                        help="comma-separated: photos, screenshots, drawings (default: all)")
    vision.add_argument("--n", type=int, default=24, help="screenshots, and drawings, per set (default 24)")
    vision.add_argument("--seed", type=int, default=0)
    vision.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=True,
                        help="image fusion tokens where a checkpoint matches (--no-fusion: evidence alone)")
    vision.add_argument("--images", type=Path, metavar="DIR", help="also save each picture there, by case name")
    vision.add_argument("--json", action="store_true")
    vision.set_defaults(func=_cmd_eval_vision)

    hist = sub.add_parser("history", help="list stored conversations, or print one")
    hist.add_argument("conversation", type=int, nargs="?", metavar="ID")
    hist.add_argument("--search", metavar="TEXT")
    hist.set_defaults(func=_cmd_history)
    _profile_parsers(sub)

    backup = sub.add_parser("backup", help="copy the conversation database to PATH (safe while mmchat runs)")
    backup.add_argument("path", type=Path, metavar="PATH")
    backup.set_defaults(func=_cmd_backup)
    return parser


def _profile_parsers(sub) -> None:
    profile = sub.add_parser("profile", help="who you are and how you like replies (local profiles)")
    psub = profile.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = psub.add_parser("show", help="the active profile")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_profile_show)
    pset = psub.add_parser("set", help="set a field: name, language, reply_length (short/medium/long), tone, "
                                       "expertise, interests, instructions, memory_mode (ask/auto/off)")
    pset.add_argument("key")
    pset.add_argument("value", nargs="*", help="empty clears the field")
    pset.set_defaults(func=_cmd_profile_set)
    export = psub.add_parser("export", help="write the profile and its memories as JSON")
    export.add_argument("file", type=Path, nargs="?", help="default: standard output")
    export.set_defaults(func=_cmd_profile_export)
    imp = psub.add_parser("import", help="merge an exported profile into the active one")
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=_cmd_profile_import)
    wipe = psub.add_parser("wipe", help="forget all memories, feedback and fields of the active profile")
    wipe.add_argument("--yes", action="store_true", help="do not ask")
    wipe.set_defaults(func=_cmd_profile_wipe)
    psub.add_parser("list", help="all local profiles").set_defaults(func=_cmd_profile_list)
    use = psub.add_parser("use", help="switch to another profile")
    use.add_argument("name")
    use.set_defaults(func=_cmd_profile_use)
    create = psub.add_parser("create", help="make a new profile (and switch to it)")
    create.add_argument("name")
    create.set_defaults(func=_cmd_profile_create)

    memory = sub.add_parser("memory", help="what the assistant remembers about you")
    msub = memory.add_subparsers(title="actions", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="pending and active memories (pinned first)")
    ml.add_argument("--search", metavar="TEXT")
    ml.add_argument("--all", action="store_true", help="also replaced and deleted ones")
    ml.set_defaults(func=_cmd_memory_list)
    add = msub.add_parser("add", help="remember a fact")
    add.add_argument("text", nargs="+")
    add.add_argument("--pin", action="store_true")
    add.set_defaults(func=_cmd_memory_add)
    for action, text in (("delete", "forget for good (it is never proposed again)"), ("pin", "always use it"),
                         ("unpin", "use it only when relevant"), ("approve", "confirm a pending memory"),
                         ("reject", "decline a pending memory")):
        one = msub.add_parser(action, help=text)
        one.add_argument("id", type=int)
        one.set_defaults(func=_cmd_memory_action, action=action)
    why = msub.add_parser("why", help="the memories a reply used")
    why.add_argument("message", type=int, metavar="MESSAGE_ID")
    why.set_defaults(func=_cmd_memory_why)

    fb = sub.add_parser("feedback", help="rate a reply and optionally correct it")
    fb.add_argument("message", type=int, metavar="MESSAGE_ID")
    fb.add_argument("rating", choices=("up", "down", "none"))
    fb.add_argument("--correction", metavar="TEXT", help='e.g. "too long", "answer in French", "call me Sam"')
    fb.set_defaults(func=_cmd_feedback)
    ev = sub.add_parser("eval-feedback", help="measure how replies follow feedback, before vs. after")
    ev.add_argument("--n", type=int, default=3, help="questions per measurement")
    ev.add_argument("--max-tokens", type=int, default=96, metavar="N")
    ev.add_argument("--model", metavar="NAME")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_eval_feedback)


# -- app -----------------------------------------------------------------------------------------
def _cmd_app(args) -> int:
    from mmchat import probe

    screen = probe.display()
    screenshot = getattr(args, "screenshot", None)
    if screenshot is not None and not screen.ok:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    elif not screen.ok:
        print(f"mmchat: cannot open the desktop app: {screen.reason}. Use `mmchat chat` to chat in the terminal.",
              file=sys.stderr)
        return EXIT_ERROR
    qt = probe.qt()
    if not qt.ok:
        raise MMChatError(f"The desktop app needs Qt: {qt.reason}.", hint="Use `mmchat chat` to chat in the terminal.")
    from mmchat_ui.app import run

    return run(screenshot=screenshot, demo=getattr(args, "demo", False))


# -- chat ----------------------------------------------------------------------------------------
def _session(args):
    from mmchat.engine import Engine

    if args.threads is not None and args.threads < 1:
        raise MMChatError("--threads must be at least 1.")
    if args.server_model and not args.server:
        raise MMChatError("--server-model needs --server.")
    engine = Engine(llm=args.model, llm_threads=args.threads, server=args.server, server_model=args.server_model)
    engine.open_llm_ahead()  # beside the imports below (torch: about a second)

    from mmchat.chat import ChatSession
    from mmchat.llm import GenerationConfig
    from mmchat.store import ConversationStore

    memory = _memory_service()
    store = None if args.temporary else ConversationStore(profile_id=memory.profile_id)
    if store is not None and store.notice:
        print(f"mmchat: {store.notice}", file=sys.stderr)
    conversation = args.conversation
    if args.resume and store is not None:
        recent = store.list_conversations()
        conversation = recent[0].id if recent else None
    if conversation is not None and store is not None and store.get_conversation(conversation) is None:
        raise MMChatError(f"There is no conversation {conversation}.", hint="See `mmchat history`.")
    generation = GenerationConfig(max_new_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    return ChatSession(engine, store, conversation, generation=generation, memory=memory)


def _cmd_chat(args) -> int:
    # Read the attachments first: a bad file is reported before any model loads or anything is stored.
    images, audio = [], None
    if args.image:
        from mmchat.images import load_image

        images = [load_image(path) for path in args.image]
    if args.audio is not None:
        from mmchat.audio import load_audio

        audio = load_audio(args.audio)
    session = _session(args)
    if args.once is not None or images or audio is not None:
        pending = _run_turn(session, args.once or "", images=images, audio=audio, show_transcript=True,
                            remember=args.remember)
        for memory in pending:
            print(f"[memory] Not remembered yet: '{memory.text}'{_flag_note(memory)}. Approve it with "
                  f"`mmchat memory approve {memory.id}`, or pass --remember.", file=sys.stderr)
        return 0
    return _repl(session, remember=args.remember)


def _flag_note(memory) -> str:
    return f" (looks like an instruction: {', '.join(memory.flags)})" if memory.flags else ""


def _run_turn(session, text: str, *, images=(), audio=None, show_transcript: bool = False,
              remember: bool = False) -> list:
    """Stream one reply to stdout; Ctrl+C stops the reply (what was said is kept). Returns the
    memory candidates of the turn that wait for confirmation."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    pending: list = []

    def work() -> None:
        try:
            for event in session.send(text, images=images, audio=audio, stop=stop, remember=remember):
                events.put(event)
        except BaseException as exc:  # handed to the main thread, which re-raises it
            events.put(exc)
        events.put(None)

    worker = threading.Thread(target=work, name="mmchat-reply", daemon=True)
    worker.start()
    try:
        while (event := events.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            if event.kind == "token":
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif event.kind == "transcript" and show_transcript:
                print(f"[heard] {event.text or '(no speech)'}", file=sys.stderr)
            elif event.kind == "notice":
                print(f"[note] {event.text}", file=sys.stderr)
            elif event.kind == "memory":
                pending += [m for m in event.memories if m.status == "pending"]
                for m in event.memories:
                    if m.status == "active":
                        print(f"[remembered] {m.text} (memory {m.id}; `mmchat memory delete {m.id}` forgets it)",
                              file=sys.stderr)
            elif event.kind == "done":
                sys.stdout.write("\n")
                if event.message is not None and event.message.status == "stopped":
                    print("[stopped]", file=sys.stderr)
    except KeyboardInterrupt:
        stop.set()
        worker.join()
        print("\n[stopped]", file=sys.stderr)
    return pending


REPL_HELP = """Commands: /image FILE (attach to your next message), /audio FILE (send a voice message),
/new (start a new conversation), /help, /quit. Ctrl+C stops a reply; Ctrl+D quits."""


def _confirm_memories(session, pending: list) -> None:
    """Ask about each memory candidate of the last turn ("Remember: '…'? [y/N]")."""
    for memory in pending:
        try:
            answer = input(f"Remember: '{memory.text}'{_flag_note(memory)}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            session.memory.approve(memory.id)
            print(f"[remembered as memory {memory.id}]", file=sys.stderr)
        else:
            session.memory.reject(memory.id)


def _repl(session, *, remember: bool = False) -> int:
    from mmchat.chat import ChatSession

    where = "temporary chat, nothing is stored" if session.temporary else f"conversation {session.conversation_id}"
    print(f"mmchat {__version__} — {session.engine.chat_label} ({where}). /help for commands.", file=sys.stderr)
    pending_images: list[Path] = []
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        command, _, rest = line.strip().partition(" ")
        try:
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                print(REPL_HELP, file=sys.stderr)
            elif command == "/new":
                session = ChatSession(session.engine, None if session.temporary else session.store,
                                      generation=session.generation, memory=session.memory)
                print(f"[new conversation {session.conversation_id}]", file=sys.stderr)
            elif command == "/image":
                from mmchat.images import load_image

                load_image(Path(rest.strip()))  # validate now, so a bad file is reported at once
                pending_images.append(Path(rest.strip()))
                print(f"[attached {rest.strip()}]", file=sys.stderr)
            elif command == "/audio":
                from mmchat.audio import load_audio

                pending = _run_turn(session, "", audio=load_audio(Path(rest.strip())), show_transcript=True,
                                    remember=remember)
                _confirm_memories(session, pending)
            elif line.strip() or pending_images:
                sys.stdout.write("mmchat> ")
                pending = _run_turn(session, line, images=pending_images, remember=remember)
                pending_images = []
                _confirm_memories(session, pending)
        except MMChatError as exc:
            print(f"mmchat: {exc}", file=sys.stderr)


# -- transcribe ----------------------------------------------------------------------------------
def _cmd_transcribe(args) -> int:
    from mmchat.audio import load_audio
    from mmchat.encoders.whisper import Whisper

    audio = load_audio(args.file)
    model = Whisper.load(args.model or "whisper-base")
    result = model.transcribe(audio, language=None if args.language == "auto" else args.language)
    if not result.speech:
        print("mmchat: no speech detected", file=sys.stderr)
    print(result.text)
    return 0


# -- fusion ------------------------------------------------------------------------------------------
def _cmd_make_fusion_data(args) -> int:
    from mmchat.fusion_data import build_dataset

    path = build_dataset(args.out, split=args.split, n_images=args.images, n_speech=args.speech, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _cmd_train_fusion(args) -> int:
    from mmchat.chat import SYSTEM_PROMPT
    from mmchat.engine import Engine
    from mmchat.fusion_eval import format_report
    from mmchat.fusion_train import DataConfig, TrainConfig, prepare_data, prepare_vision_data, train_fusion
    from mmchat.media import checkpoint_dirs

    engine = Engine(llm=args.model, image=args.image_encoder)
    data = DataConfig(train_images=args.images, train_speech=args.speech, train_photos=args.photos, seed=args.seed)
    if args.data is not None:
        train_dir, heldout_dir = args.data, args.heldout
    elif args.photos:
        train_dir, heldout_dir = prepare_vision_data(data)
    else:
        train_dir, heldout_dir = prepare_data(data)
    if args.eval_limit <= 0:
        heldout_dir = None
    out = args.out or checkpoint_dirs(engine.model_name("llm"), engine.model_name("image"))[0]
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "align_steps": args.align_steps,
             "image_projector": args.image_projector, "audio_projector": args.audio_projector, "train": args.train,
             "image_grid": args.image_grid, "image_slots": args.image_slots, "image_stats": args.image_stats,
             "audio_stretch": args.audio_stretch, "audio_time_masks": args.audio_time_masks,
             "audio_feature_masks": args.audio_feature_masks}
    config = TrainConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    report = train_fusion(engine, train_dir=train_dir, heldout_dir=heldout_dir, out=out, config=config,
                          system_prompt=SYSTEM_PROMPT, resume=not args.no_resume, eval_limit=args.eval_limit,
                          audio_from=args.audio_from, start_from=args.start_from)
    if "heldout" in report:
        print(format_report(report["heldout"]))
    print(f"fusion checkpoint written to {out}")
    return 0


def _cmd_eval_fusion(args) -> int:
    from mmchat import fusion
    from mmchat.chat import SYSTEM_PROMPT
    from mmchat.engine import Engine
    from mmchat.fusion_data import dataset_hash, validate_dataset
    from mmchat.fusion_eval import evaluate, format_report
    from mmchat.fusion_train import HEARD_KEY, DataConfig, build_examples, encode_features, prepare_heldout
    from mmchat.media import find_checkpoint

    engine = Engine(llm=args.model, image=args.image_encoder)
    llm = engine.training_llm  # its losses run through torch, where the stored metrics were measured
    directory = args.checkpoint or find_checkpoint(llm.name, engine.model_name("image"))
    if directory is None:
        raise MMChatError(f"No fusion checkpoint for {llm.name}.", hint="Train one with `mmchat train-fusion`.")
    heldout = args.data or prepare_heldout(DataConfig())
    samples = validate_dataset(heldout)
    modalities = {s.modality for s in samples}
    image_encoder = engine.image_encoder if "image" in modalities else None
    whisper = engine.whisper if "audio" in modalities else None
    model = fusion.load(directory, llm=llm.name, hidden_size=llm.hidden_size,
                        image_fingerprint=getattr(image_encoder, "fingerprint", None),
                        audio_fingerprint=getattr(whisper, "fingerprint", None), embed=llm.embed)
    features = encode_features(samples, image_encoder=image_encoder, whisper=whisper, data_hash=dataset_hash(heldout))
    heard = fusion.read_meta(directory).metrics.get("train", {}).get(HEARD_KEY) if model.config.audio_collapse else None
    report = evaluate(llm, model, features, build_examples(samples), system_prompt=SYSTEM_PROMPT,
                      limit_per_kind=args.limit, heard=set(heard) if heard is not None else None)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_eval_vision(args) -> int:
    from mmchat.engine import Engine
    from mmchat.vision import eval as vision_eval

    chosen = vision_eval.cases([s.strip() for s in args.sets.split(",") if s.strip()], n=args.n, seed=args.seed)
    if args.images is not None:
        args.images.mkdir(parents=True, exist_ok=True)
        for case in chosen:
            case.image().save(args.images / f"{case.set}-{case.name}.png")

    def progress(done: int, total: int, row: dict) -> None:
        if not args.json:
            print(f"[{done}/{total}] {'right' if row['right'] else 'WRONG'} {row['set']}/{row['name']}: "
                  f"{' '.join(row['reply'].split())[:100]}", file=sys.stderr)

    report = vision_eval.run(Engine(), chosen, fusion=args.fusion, progress=progress)
    print(json.dumps(report, indent=2) if args.json else vision_eval.format_report(report))
    return 0


# -- models and doctor ---------------------------------------------------------------------------
def _cmd_models_list(args) -> int:
    from mmchat import doctor

    rows = doctor.model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    state = max(len(r["state"]) for r in rows)  # the column as wide as its longest entry
    print(f"{'name':30} {'role':18} {'state':{state}} {'size':>9} {'RAM need':>9} {'fits':4}  licence")
    for r in rows:
        default = " *" if r["default"] else ""
        ram = "" if r["ram_need_mb"] is None else f"{r['ram_need_mb']} MB"
        fits = {True: "yes", False: "NO", None: ""}[r["fits_ram"]]
        print(f"{r['name'] + default:30} {r['role']:18} {r['state']:{state}} {r['size_mb']:>6} MB {ram:>9} {fits:4}  "
              f"{r['licence']}")
    print("* default. Optional models: `mmchat models fetch NAME`.")
    print(_ram_footnote(doctor.ram_room()))
    image = doctor.images()
    print(f"Images: {image['encoder']} is active ({'pretrained' if image['pretrained'] else 'untrained: seeded random init'}); "
          f"text in images is read by {image['ocr']}.")
    return 0


def _ram_footnote(room: int | None) -> str:
    from mmchat.llm import MAX_CONTEXT_TOKENS
    from mmchat.llm.gguf import RUNTIME_OVERHEAD_BYTES

    basis = (f"RAM need: what a chat model on llama.cpp holds (its file, a KV cache of {MAX_CONTEXT_TOKENS} "
             f"positions, {RUNTIME_OVERHEAD_BYTES // 2**20} MiB of buffers).")
    if room is None:
        return basis + "\nThis system does not say how much RAM it has."
    return basis + f"\nfits: within the {room / 1e9:.1f} GB of RAM available now."


def _cmd_models_fetch(args) -> int:
    from mmchat import registry
    from mmchat.download import fetch_model

    spec = registry.get(args.name)
    if spec.hub_id is None:
        print(f"{spec.name} is bundled with mmchat; nothing to fetch.")
        return 0
    path = fetch_model(spec.name)
    print(f"{spec.name} fetched into {path}")
    return 0


def _cmd_models_verify(args) -> int:
    from mmchat import doctor, registry

    specs = [registry.get(args.name)] if args.name else [m for m in registry.MODELS if m.bundled]
    failed = 0
    for spec in specs:
        ok, detail = doctor.verify_model(spec)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {spec.name}: {detail}")
    return EXIT_ERROR if failed else 0


def _cmd_server_key(args) -> int:
    import getpass

    from mmchat.llm.remote import normalise_url, store_api_key

    url = normalise_url(args.url)
    key = getpass.getpass(f"API key for {url} (not shown): ").strip()
    if not key:
        raise MMChatError("No key given; nothing stored.")
    store_api_key(url, key)
    print(f"Stored in the system keyring for {url}.")
    return 0


def _cmd_doctor(args) -> int:
    from mmchat import doctor

    report = doctor.report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(doctor.format_report(report))
    return 0


def _open_store(*, profile_id: int | None = None):
    """The conversation store; a notice (a broken file was moved aside) goes to stderr."""
    from mmchat.store import DEFAULT_PROFILE_ID, ConversationStore

    store = ConversationStore(profile_id=DEFAULT_PROFILE_ID if profile_id is None else profile_id)
    if store.notice:
        print(f"mmchat: {store.notice}", file=sys.stderr)
    return store


def _cmd_backup(args) -> int:
    import contextlib
    import sqlite3

    store = _open_store()
    try:
        target = store.backup(args.path)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as copy:
        count = copy.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    print(f"backed up {store.db.path} to {target} ({count} messages)")
    return 0


def _cmd_history(args) -> int:
    store = _open_store(profile_id=_profiles().active_profile().id)
    if args.conversation is None:
        for c in store.list_conversations(search=args.search):
            print(f"{c.id:5}  {c.message_count:3} msgs  {c.title}")
        return 0
    if store.get_conversation(args.conversation) is None:
        raise MMChatError(f"There is no conversation {args.conversation}.")
    for m in store.messages(args.conversation):
        extras = "".join(f" [{a.kind}]" for a in m.attachments)
        print(f"{m.role}>{extras} {m.content}")
        if m.meta.get("memories"):
            print(f"    [message {m.id} used memories {', '.join(str(i) for i in m.meta['memories'])}: "
                  f"`mmchat memory why {m.id}`]")
    return 0


# -- profile, memory, feedback -------------------------------------------------------------------
def _profiles():
    from mmchat.profile import ProfileStore

    profiles = ProfileStore()
    if profiles.notice:
        print(f"mmchat: {profiles.notice}", file=sys.stderr)
    return profiles


def _memory_service(profiles=None):
    from mmchat.memory import MemoryService

    return MemoryService(profiles or _profiles())


def _cmd_profile_show(args) -> int:
    import dataclasses

    memory = _memory_service()
    profile = memory.profile
    counts = {status: len(memory.memories(statuses=(status,))) for status in ("active", "pending")}
    if args.json:
        print(json.dumps({**dataclasses.asdict(profile), "memories": counts}, indent=2))
        return 0
    print(f"profile {profile.name} (id {profile.id})")
    for key in ("display_name", "language", "reply_length", "tone", "expertise", "interests",
                "custom_instructions", "memory_mode"):
        print(f"  {key:20} {getattr(profile, key) or '-'}")
    print(f"  memories             {counts['active']} active, {counts['pending']} pending")
    return 0


def _cmd_profile_set(args) -> int:
    memory = _memory_service()
    profile = memory.set_profile(**{args.key: " ".join(args.value)})
    print(f"{profile.name}: {args.key} = {' '.join(args.value) or '(cleared)'}")
    return 0


def _cmd_profile_export(args) -> int:
    profiles = _profiles()
    text = json.dumps(profiles.export_profile(profiles.active_profile().id), indent=2, ensure_ascii=False)
    if args.file is None:
        print(text)
        return 0
    try:
        args.file.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise MMChatError(f"Could not write {args.file}: {exc.strerror or exc}.") from exc
    print(f"profile written to {args.file}", file=sys.stderr)
    return 0


def _cmd_profile_import(args) -> int:
    from mmchat.memory import import_profile

    try:
        data = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MMChatError(f"Could not read the profile file {args.file}: {exc}.") from exc
    counts = import_profile(_memory_service(), data)
    print(f"imported {counts['fields']} fields, {counts['memories']} memories, {counts['deleted']} deleted facts")
    return 0


def _cmd_profile_wipe(args) -> int:
    profiles = _profiles()
    profile = profiles.active_profile()
    if not args.yes:
        if not sys.stdin.isatty():
            raise MMChatError("Refusing to wipe without confirmation.", hint="Add --yes.")
        if input(f"Forget everything about profile {profile.name!r}? [y/N] ").strip().lower() not in ("y", "yes"):
            return EXIT_ERROR
    profiles.wipe(profile.id)
    print(f"profile {profile.name} wiped")
    return 0


def _cmd_profile_list(args) -> int:
    profiles = _profiles()
    active = profiles.active_profile().id
    for p in profiles.profiles():
        print(f"{'*' if p.id == active else ' '} {p.name}" + (f"  ({p.display_name})" if p.display_name else ""))
    return 0


def _cmd_profile_use(args) -> int:
    profiles = _profiles()
    profile = profiles.use_profile(profiles.find_profile(args.name).id)
    print(f"using profile {profile.name}")
    return 0


def _cmd_profile_create(args) -> int:
    profiles = _profiles()
    profile = profiles.use_profile(profiles.create_profile(args.name).id)
    print(f"created profile {profile.name} and switched to it")
    return 0


def _print_memory(m) -> None:
    marks = ("📌 " if m.pinned else "") + ("" if m.status == "active" else f"[{m.status}] ")
    print(f"{m.id:5}  {marks}{m.text or '(deleted)'}{_flag_note(m)}")


def _cmd_memory_list(args) -> int:
    statuses = ("pending", "active", "superseded", "deleted") if args.all else ("pending", "active")
    for m in _memory_service().memories(statuses=statuses, search=args.search):
        _print_memory(m)
    return 0


def _cmd_memory_add(args) -> int:
    memory = _memory_service().add(" ".join(args.text), pinned=args.pin)
    _print_memory(memory)
    return 0


def _cmd_memory_action(args) -> int:
    service = _memory_service()
    action = {"delete": service.delete, "approve": service.approve, "reject": service.reject,
              "pin": service.pin, "unpin": lambda i: service.pin(i, pinned=False)}[args.action]
    memory = action(args.id)
    print(f"memory {memory.id}: {args.action}d" if args.action.endswith("e") else f"memory {memory.id}: {args.action}ned")
    return 0


def _cmd_memory_why(args) -> int:
    from mmchat.store import ConversationStore

    service = _memory_service()
    message = ConversationStore(profile_id=service.profile_id).message(args.message)
    if message is None or message.role != "assistant":
        raise MMChatError(f"There is no reply {args.message} in this profile.", hint="See `mmchat history ID`.")
    used = service.why(message)
    if not used:
        print("This reply used no memories.")
    for m in used:
        _print_memory(m)
    return 0


def _cmd_feedback(args) -> int:
    from mmchat.feedback import learn
    from mmchat.store import ConversationStore

    service = _memory_service()
    rating = {"up": 1, "down": -1, "none": 0}[args.rating]
    result = learn(service, ConversationStore(profile_id=service.profile_id), message_id=args.message,
                   rating=rating, correction=args.correction)
    print("feedback saved" + "".join(f"; {k} = {v}" for k, v in result.changed.items())
          + (f"; kept as memory {result.memory.id} ({result.memory.status})" if result.memory else ""))
    return 0


def _cmd_eval_feedback(args) -> int:
    from mmchat.engine import Engine
    from mmchat.feedback import evaluate_feedback, format_evaluation

    report = evaluate_feedback(Engine(llm=args.model), n=args.n, max_new_tokens=args.max_tokens)
    print(json.dumps(report, indent=2) if args.json else format_evaluation(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
