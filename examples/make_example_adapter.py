"""Train the example NER LoRA that `adapter-convert demo` converts, on a MiniLM teacher.

    python examples/make_example_adapter.py --out teacher-ner-lora --steps 300

Builds the teacher (all-MiniLM-L6-v2 as a BERT token classifier) next to the adapter if needed.
"""

import argparse
from pathlib import Path

from adapter_convert.demo import find_data, train_example_adapter
from adapter_convert.demo.minilm import build_teacher

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=Path("teacher-ner-lora"))
parser.add_argument("--teacher", type=Path, default=Path("teacher-minilm-l6"))
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--data", type=Path, default=None, help="WikiNEuRal folder with val.conllu and test.conllu (default: the sample shipped with the package)")
args = parser.parse_args()
if not args.teacher.is_dir():
    build_teacher(args.teacher)
train_example_adapter(args.teacher, args.out, data=find_data(args.data), steps=args.steps)
print(f"Wrote {args.out}")
