"""``attnlab generate``: continue a prompt with a checkpoint from a local directory, streaming tokens."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..backends import BACKENDS
from ..gpt import kv_cache_implementations
from ..gpt.files import one_line
from ..gpt.options import GenerationOptions, resolve_generation_device
from ..gpt.tokenizer import encode_prompt, load_tokenizer
from ..implementations import IMPLEMENTATIONS
from ..models.local import DEFAULT_IMPL, PREFERRED_BACKENDS, plan_local_run

__all__ = ["add_parser"]

_DEFAULTS = GenerationOptions()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text with a local checkpoint (Llama 3, Qwen 2/3, Mistral, Gemma 2/3, GPT-2, ...)",
        description=(
            "Load a checkpoint directory (Hugging Face: config.json + model.safetensors, its shards, or "
            "pytorch_model.bin; or a GPT-2 saved by attnlab) and continue a prompt, printing tokens as they "
            "are produced. The prompt is encoded with tokenizer.json from the same directory (the "
            "'tokenizers' package); with --ids, token ids are given and printed, and tokenizer.json is not "
            "read. Generation stops at the checkpoint's end-of-sequence ids (or --eos-id). Nothing is "
            "downloaded. GPT-2 runs on attnlab's GPT-2 model with a multi-head implementation (--impl); every "
            "other architecture, and GPT-2 when --attn-impl is given, runs on attnlab.models with an attention "
            "backend (--attn-impl)."
        ),
        epilog=(
            "examples:\n"
            '  attnlab generate --weights ./gpt2 --prompt "Every effort moves you" --max-new-tokens 20\n'
            "  attnlab generate --weights ./gpt2 --ids 6109,3626,6100,345 --impl einsum --no-cache\n"
            '  attnlab generate --weights ./Llama-3.2-1B --prompt "The capital of France is"\n'
            '  attnlab generate --weights ./gemma-2-2b --prompt "Hello" --attn-impl flash_torch\n'
            "  attnlab generate --weights ./Qwen3-0.6B --prompts-file prompts.txt --max-batch 16\n"
            f"implementations with a KV cache: {', '.join(kv_cache_implementations())}\n"
            f"attention backends: {', '.join(BACKENDS)} (default: the first of {', '.join(PREFERRED_BACKENDS)} "
            "that does every feature the model needs)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--weights", required=True, type=Path, help="checkpoint directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to continue (needs tokenizer.json in --weights)")
    prompt.add_argument("--ids", help="comma-separated prompt token ids, e.g. 6109,3626")
    prompt.add_argument(
        "--prompts-file",
        type=Path,
        help="many prompts, one per line, run together by attnlab.serving.Engine (continuous batching)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=_DEFAULTS.max_new_tokens,
        help=f"tokens to generate (default {_DEFAULTS.max_new_tokens})",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=_DEFAULTS.temperature,
        help=f"0 is greedy (default {_DEFAULTS.temperature:g})",
    )
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--eos-id", type=int, default=None, help="stop at this token id")
    attention = parser.add_mutually_exclusive_group()
    attention.add_argument(
        "--impl",
        default=None,
        help=f"GPT-2's attention implementation (default {DEFAULT_IMPL}): {', '.join(IMPLEMENTATIONS)}",
    )
    attention.add_argument(
        "--attn-impl", default=None, help=f"attention backend of attnlab.models: {', '.join(BACKENDS)}"
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step")
    parser.add_argument(
        "--seed", type=int, default=_DEFAULTS.seed, help=f"random seed for sampling (default {_DEFAULTS.seed})"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    parser.add_argument(
        "--max-batch", type=int, default=None, help="with --prompts-file: requests run at once (default: the engine's)"
    )
    parser.set_defaults(func=run)


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]  # an empty item ("1,,2") is an error, not skipped
    except ValueError:
        raise ValueError(f"--ids must be comma-separated integers, got {one_line(repr(text), 80)}") from None
    if not ids:
        raise ValueError("--ids is empty: give at least one token id")
    return ids


class _Stream:
    """Prints the prompt, then each new token as it comes: as text with a tokenizer, else as ids.

    Text is re-decoded in full each step and only the new part printed, because a byte-level BPE token
    can be half a character; an unfinished character (decoded as U+FFFD) waits for the next token.
    """

    def __init__(self, tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = prompt_ids
        self.new_ids: list[int] = []
        self.printed = tokenizer.decode(prompt_ids) if tokenizer else ",".join(map(str, prompt_ids))
        print(self.printed, end="", flush=True)

    def add(self, token_id: int) -> None:
        self.new_ids.append(token_id)
        if self.tokenizer is None:
            print(f",{token_id}", end="", flush=True)
            return
        text = self.tokenizer.decode(self.prompt_ids + self.new_ids)
        if not text.endswith("\ufffd"):  # wait while the last character is an incomplete UTF-8 sequence
            self._emit(text)

    def finish(self) -> None:
        """Print whatever is still held back (a trailing incomplete character included)."""
        if self.tokenizer is not None:
            self._emit(self.tokenizer.decode(self.prompt_ids + self.new_ids))

    def _emit(self, text: str) -> None:
        # Normally ``text`` extends what is printed; if decoding changed earlier characters (a replacement
        # character that later resolved), print from where the two differ, since printed text can't be undone.
        same = (i for i, (old, new) in enumerate(zip(self.printed, text, strict=False)) if old != new)
        start = next(same, min(len(self.printed), len(text)))  # length of the common prefix
        print(text[start:], end="", flush=True)
        self.printed = text


def run(args: argparse.Namespace) -> int:
    options = GenerationOptions(  # every generation argument is checked first, before anything is loaded
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        eos_id=args.eos_id,
        use_cache=not args.no_cache,
        seed=args.seed,
    )
    device = resolve_generation_device(args.device)
    if args.prompts_file is not None:
        return _run_many(args, options, device)
    plan = plan_local_run(  # which model, on which attention: checked against the config before loading
        args.weights, device, impl=args.impl, attn_impl=args.attn_impl, use_cache=options.use_cache
    )
    if args.ids is not None:  # ids in, ids out: tokenizer.json is not needed, so not read
        tokenizer, prompt_ids = None, _parse_ids(args.ids)
    else:
        tokenizer = load_tokenizer(args.weights)
        prompt_ids = encode_prompt(tokenizer, args.prompt)

    print(f"loading {args.weights} on {plan.attention} ...", file=sys.stderr, flush=True)
    model = plan.load()  # eval mode
    vocab_size = model.config.vocab_size
    if bad := [i for i in prompt_ids if not 0 <= i < vocab_size]:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    steps = plan.steps(model, prompt_ids, options)  # checks the prompt against the context before printing it

    stream = _Stream(tokenizer, prompt_ids)
    start = time.perf_counter()
    for token in steps:
        stream.add(int(token[0]))
    elapsed = time.perf_counter() - start
    stream.finish()
    print(flush=True)
    mode = "KV cache" if options.use_cache else "no cache"
    num_new = len(stream.new_ids)
    print(
        f"{num_new} tokens in {elapsed:.2f} s ({num_new / max(elapsed, 1e-9):.1f} tokens/s), {plan.attention}, {mode}",
        file=sys.stderr,
    )
    return 0


def _run_many(args: argparse.Namespace, options: GenerationOptions, device) -> int:
    """``--prompts-file``: every line through the serving engine, a progress bar, then each completion in order."""
    from rich.console import Console
    from rich.progress import Progress

    from ..serving import ENGINE_BACKEND, Engine
    from ..serving.prompts import read_prompts_file

    if args.impl is not None:
        raise ValueError("--prompts-file runs on attnlab.models' serving engine: choose an --attn-impl, not --impl")
    if args.no_cache:
        raise ValueError("--prompts-file needs the KV cache (the engine pages it); drop --no-cache")
    texts = read_prompts_file(args.prompts_file)
    attn_impl = args.attn_impl or ENGINE_BACKEND
    plan = plan_local_run(args.weights, device, impl=None, attn_impl=attn_impl, use_cache=True)
    tokenizer = load_tokenizer(args.weights)
    prompts = [encode_prompt(tokenizer, text) for text in texts]
    print(f"loading {args.weights} on {plan.attention} ...", file=sys.stderr, flush=True)
    engine_options = {} if args.max_batch is None else {"max_batch": args.max_batch}
    engine = Engine(plan.load(), **engine_options)
    outputs: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    with Progress(console=Console(stderr=True), transient=True) as progress:  # stdout holds the completions
        task = progress.add_task(f"{len(prompts)} prompts", total=len(prompts) * options.max_new_tokens)
        for index, token in engine.stream(prompts, options):
            outputs[index].append(token)
            progress.advance(task)
    elapsed = time.perf_counter() - start
    for text, prompt_ids, new_ids in zip(texts, prompts, outputs, strict=True):
        print(tokenizer.decode(prompt_ids + new_ids) if tokenizer is not None else text)
    made = sum(len(ids) for ids in outputs)
    print(f"{len(prompts)} prompts, {made} tokens in {elapsed:.2f} s ({made / max(elapsed, 1e-9):.1f} tokens/s), "
          f"{plan.attention}, serving engine", file=sys.stderr)  # fmt: skip
    return 0
