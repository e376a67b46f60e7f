"""Build small expert LMs offline: a BPE tokenizer, a tiny Llama base model, one LoRA adapter per cluster.

c-BTM trains one expert per cluster; the paper names LoRA experts as its next step. Here both are
real but small: the base model learns the whole corpus for a bounded number of steps on the CPU, then
each adapter is fine-tuned on its cluster's documents only. Every training document ends with the
end-of-sequence token, so the experts learn to stop. Their text is rough; they are real causal LMs
that any engine able to load a Llama model (vLLM, SGLang, TGI, llama.cpp after conversion) serves.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from expert_router.config import LORA_RANKS, Deployment

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]


class BuildSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(2000, ge=300)
    hidden_size: int = Field(128, ge=32, description="multiple of 64 per head: vLLM's CPU attention needs head_dim 64+")
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    seq_len: int = Field(96, ge=16, description="training window in tokens")
    base_steps: int = Field(400, ge=1)
    adapter_steps: int = Field(
        150,
        ge=1,
        description="steps per LoRA adapter: enough for each expert to beat the "
        "base model on its cluster's held-out text",
    )
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    lora_rank: int = Field(8, ge=1, le=LORA_RANKS[-1], description="LoRA adapter rank (vLLM serves up to 512)")
    held_out: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="share of documents kept out of training, for "
        "`expert-router evaluate` (written to OUT/held-out.json)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _head_size_vllm_runs(self) -> BuildSettings:
        if self.hidden_size % self.heads or self.hidden_size // self.heads not in HEAD_SIZES:
            raise ValueError(f"hidden_size / heads must be a head size vLLM's CPU attention supports {HEAD_SIZES}")
        return self


Progress = Callable[[str, int, int], None]


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer (no unknown tokens) with a chat template and an end-of-sequence token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_documents(tokenizer, texts: Sequence[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each document as bos + tokens + eos, cut or padded to seq_len; labels -100 on padding."""
    ids = np.full((len(texts), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(texts), seq_len), -100, dtype=np.int64)
    for row, encoded in enumerate(tokenizer(list(texts), add_special_tokens=False)["input_ids"]):
        sequence = [tokenizer.bos_token_id, *encoded[: seq_len - 2], tokenizer.eos_token_id]
        ids[row, : len(sequence)] = sequence
        labels[row, : len(sequence)] = sequence
    return ids, labels


def _train(
    model, ids: np.ndarray, labels: np.ndarray, steps: int, settings: BuildSettings, name: str, progress: Progress
) -> float:
    import torch

    generator = np.random.default_rng(settings.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        rows = generator.integers(0, len(ids), size=min(settings.batch_size, len(ids)))
        batch, target = torch.from_numpy(ids[rows]), torch.from_numpy(labels[rows])
        loss = model(input_ids=batch, attention_mask=(target != -100).long(), labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        progress(name, step + 1, steps)
    model.eval()
    return loss_value


def build_experts(
    texts_by_cluster: dict[int, list[str]], out: Path, settings: BuildSettings, progress: Progress, merge: bool = False
) -> dict:
    """Write out/base (model + tokenizer), out/adapters/expert-C and, with `merge`, out/experts/expert-C."""
    import torch

    torch.manual_seed(settings.seed)
    all_texts = [t for texts in texts_by_cluster.values() for t in texts]
    progress("tokenizer", 0, 1)
    tokenizer = train_tokenizer(all_texts, settings.vocab_size)
    progress("tokenizer", 1, 1)
    base_dir, loss = _build_base(tokenizer, all_texts, out, settings, progress)
    losses = {"base": loss, **_build_adapters(tokenizer, texts_by_cluster, base_dir, out, settings, progress, merge)}
    info = {
        "settings": settings.model_dump(),
        "final_loss": losses,
        "documents": {str(c): len(t) for c, t in texts_by_cluster.items()},
    }
    (out / "build.json").write_text(json.dumps(info, indent=2))
    return info


HEAD_SIZES = (64, 80, 96, 112, 128, 256)


def _build_base(
    tokenizer: Any, texts: list[str], out: Path, settings: BuildSettings, progress: Progress
) -> tuple[Path, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.hidden_size * 2,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    base = LlamaForCausalLM(config)
    ids, labels = encode_documents(tokenizer, texts, settings.seq_len)
    loss = _train(base, ids, labels, settings.base_steps, settings, "base model", progress)
    base_dir = out / "base"
    base.generation_config.eos_token_id = tokenizer.eos_token_id
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return base_dir, loss


def _build_adapters(
    tokenizer: Any,
    texts_by_cluster: dict[int, list[str]],
    base_dir: Path,
    out: Path,
    settings: BuildSettings,
    progress: Progress,
    merge: bool,
) -> dict[str, float]:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaForCausalLM

    losses = {}
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=2 * settings.lora_rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    for cluster, texts in sorted(texts_by_cluster.items()):
        name = f"expert-{cluster}"
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora)
        ids, labels = encode_documents(tokenizer, texts, settings.seq_len)
        losses[name] = _train(model, ids, labels, settings.adapter_steps, settings, f"adapter {name}", progress)
        model.save_pretrained(str(out / "adapters" / name))
        tokenizer.save_pretrained(out / "adapters" / name)
        if merge:
            merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), out / "adapters" / name)
            merged.merge_and_unload().save_pretrained(out / "experts" / name)
            tokenizer.save_pretrained(out / "experts" / name)
    return losses


def served_rank(rank: int) -> int:
    """The `--max-lora-rank` vLLM is started with for adapters of `rank`: the next of its choices (at
    least 8, its default). 12 had been written as it was, and vLLM refused to start."""
    return min(r for r in LORA_RANKS if r >= max(8, rank))


BUILT = ("base", "adapters", "experts", "deployment.yaml", "deployment-per-expert.yaml", "held-out.json", "build.json")
"""What a build writes into its folder (and the classifier, which may be the user's own)."""


def clear_previous_build(out: Path) -> None:
    """Remove what an earlier build wrote in `out`: rebuilt with another k or without --merge, the old
    adapters, merged models and deployment files stayed beside the new ones (evaluate read them all),
    and a build stopped half-way left the old deployment pointing at a new base model."""
    for name in BUILT:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_deployments(
    out: Path, classifier_dir: Path, clusters: Sequence[int], port: int, merged: bool, lora_rank: int
) -> list[Path]:
    """deployment.yaml (one vLLM server, one LoRA adapter per expert) and, with merged experts,
    deployment-per-expert.yaml (one vLLM server per expert: the paper's layout). Both are built as
    `Deployment`s, so what is written is what `serve` will accept."""
    local_classifier = out / "classifier"
    if classifier_dir.resolve() != local_classifier.resolve():
        shutil.copytree(classifier_dir, local_classifier, dirs_exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    lora = Deployment.model_validate({
        "classifier": "classifier",
        "engine": {"kind": "vllm-lora", "base_model": "base", "max_lora_rank": served_rank(lora_rank)},
        "experts": [
            {"cluster": c, "model": f"expert-{c}", "adapter": f"adapters/expert-{c}", "endpoints": [url]}
            for c in clusters
        ],
    })  # fmt: skip
    paths = [
        lora.write(
            out / "deployment.yaml",
            "Written by `expert-router experts build`. Serve: expert-router experts serve deployment.yaml",
        )
    ]
    if merged:
        per_expert = Deployment.model_validate({
            "classifier": "classifier",
            # vLLM's CPU build takes its share of the machine's memory for each server's KV cache:
            # the one-server share for each of k servers was 1.6 x the machine's memory at k = 8.
            "engine": {"kind": "vllm", "memory_fraction": min(0.2, 0.8 / len(clusters))},
            "experts": [
                {"cluster": c, "model": f"expert-{c}", "model_path": f"experts/expert-{c}",
                 "endpoints": [f"http://127.0.0.1:{port + i}"]}
                for i, c in enumerate(clusters)
            ],
        })  # fmt: skip
        paths.append(
            per_expert.write(out / "deployment-per-expert.yaml", "One vLLM server per expert (the paper's layout).")
        )
    return paths
