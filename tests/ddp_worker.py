"""Run by the two-process test under torchrun: train, then dump this rank's trainable weights."""

import sys

import torch.distributed as dist
from safetensors.torch import save_file

from gptclf import train


def main() -> None:
    dump_dir, options = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])
    for key in ("max_steps", "batch_size", "lora_r", "seed"):
        options[key] = int(options[key])
    options["lr"] = float(options["lr"])
    options["lora_dropout"] = float(options["lora_dropout"])
    result = train(**options)
    rank = dist.get_rank() if dist.is_initialized() else 0
    weights = {n: p.detach().contiguous() for n, p in result.model.named_parameters() if p.requires_grad}
    save_file(weights, f"{dump_dir}/rank{rank}.safetensors")


if __name__ == "__main__":
    main()
