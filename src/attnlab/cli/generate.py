"""``attnlab generate``: continue a prompt with a GPT-2 checkpoint from a local directory, streaming tokens."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..bench.devices import resolve_device
from ..gpt import iter_generate, kv_cache_implementations, load_model
from ..gpt.kv_cache import check_kv_cache_support
from ..implementations import IMPLEMENTATIONS

__all__ = ["add_parser"]

TOKENIZER_FILE = "tokenizer.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text with a GPT-2 checkpoint (Hugging Face or attnlab) on any attention implementation",
        description=(
            "Load a GPT-2 checkpoint directory (Hugging Face: config.json + model.safetensors or "
            "pytorch_model.bin; or one saved by attnlab) and continue a prompt, printing tokens as they "
            "are produced. The prompt is encoded with tokenizer.json from the same directory (the "
            "'tokenizers' package); without one, give token ids with --ids. Nothing is downloaded."
        ),
        epilog=(
            "examples:\n"
            '  attnlab generate --weights ./gpt2 --prompt "Every effort moves you" --max-new-tokens 20\n'
            "  attnlab generate --weights ./gpt2 --ids 6109,3626,6100,345 --impl einsum --no-cache\n"
            f"implementations with a KV cache: {', '.join(kv_cache_implementations())}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--weights", required=True, type=Path, help="checkpoint directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text to continue (needs tokenizer.json in --weights)")
    prompt.add_argument("--ids", help="comma-separated prompt token ids, e.g. 6109,3626")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate (default 30)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default 0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--eos-id", type=int, default=None, help="stop at this token id")
    parser.add_argument(
        "--impl", default="sdpa", help=f"attention implementation (default sdpa): {', '.join(IMPLEMENTATIONS)}"
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    parser.set_defaults(func=run)


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError("--ids is empty: give at least one token id")
    return ids


def _load_tokenizer(directory: Path):  # -> tokenizers.Tokenizer | None
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


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
    if not args.weights.is_dir():
        raise ValueError(f"weights directory {args.weights} does not exist")
    if not args.no_cache:
        check_kv_cache_support(args.impl)  # before the (slow) load
    tokenizer = _load_tokenizer(args.weights)
    if args.prompt is not None:
        if tokenizer is None:
            raise ValueError(f"--prompt needs {args.weights / TOKENIZER_FILE}; without it, give --ids")
        prompt_ids = tokenizer.encode(args.prompt).ids
        if not prompt_ids:
            raise ValueError(f"the prompt {args.prompt!r} encodes to no tokens")
    else:
        prompt_ids = _parse_ids(args.ids)

    print(f"loading {args.weights} on {args.impl} ...", file=sys.stderr, flush=True)
    device = resolve_device(args.device)  # an absent device is a clear error, before the load
    model = load_model(args.weights, attn_impl=args.impl, dropout=0.0).to(device)  # inference only
    vocab_size = model.config.vocab_size
    if bad := [i for i in prompt_ids if not 0 <= i < vocab_size]:
        raise ValueError(f"token ids {bad} are outside the vocabulary [0, {vocab_size})")
    idx = torch.tensor([prompt_ids], device=device)  # (1, t)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    stream = _Stream(tokenizer, prompt_ids)
    start = time.perf_counter()
    for token in iter_generate(
        model,
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        eos_id=args.eos_id,
        use_cache=not args.no_cache,
        generator=generator,
    ):
        stream.add(int(token[0]))
    elapsed = time.perf_counter() - start
    stream.finish()
    print(flush=True)
    mode = "no cache" if args.no_cache else "KV cache"
    num_new = len(stream.new_ids)
    print(
        f"{num_new} tokens in {elapsed:.2f} s ({num_new / max(elapsed, 1e-9):.1f} tokens/s), {args.impl}, {mode}",
        file=sys.stderr,
    )
    return 0
