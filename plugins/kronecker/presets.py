"""KroneckerBERT presets (Tahaei et al., NAACL 2022, Table 1) for BERT-family models.

Each preset fixes the *small* factor of every matrix and lets the large one follow from the matrix, so the
same preset adapts to any hidden / FFN size (e.g. MiniLM-L6, hidden 384, FFN 1536) at about the same
ratio. On BERT-base (hidden 768, FFN 3072, vocab 30522) these give exactly the paper's per-matrix shapes:

==========  ======================  ======================  ======================  ===========
preset      attention Q/K/V/O       FFN in (3072×768)       FFN out (768×3072)      embedding
==========  ======================  ======================  ======================  ===========
KB8         A 384×384 ⊗ B 2×2       A 8×2 ⊗ B 384×384       A 2×8 ⊗ B 384×384       B 1×8
KB21        A 384×48 ⊗ B 2×16       A 16×2 ⊗ B 192×384      A 2×16 ⊗ B 384×192      B 1×16
KB5 (4 Σ)   A 384×48 ⊗ B 2×16       A 384×384 ⊗ B 8×2       A 384×384 ⊗ B 2×8       B 1×12
==========  ======================  ======================  ======================  ===========

Counting rule (as ``compresskit.walker.plan_compression`` reports it): every parameter of the model
once; biases, LayerNorms, position and token-type embeddings and the pooler stay dense; a task head
(classifier) is excluded by counting the base ``BertModel``. FLOPs: linear maps only, (2n − 1)·m per
dense matrix and Eq. 7 per Kronecker layer, at 128 tokens. BERT-base: 109,482,240 parameters and 21.7B
FLOPs in the 72 encoder matrices; KB21: 5,228,272 and 1.40B; KB8: 14,654,216 and 5.47B (the paper prints
14.3M and 5.2B; its printed shapes give these, see ``reference/kroneckerbert.md`` §1.6).

KB5 is an assumption: the paper's printed KB5 row is not self-consistent (its attention would be
larger than dense). We use 4 terms in attention and FFN with the shapes above and one term on the embedding
(B 1×12): 20,762,508 parameters (5.27×) and 9.26B FLOPs, the reference's configuration consistent with
"about 20M, 9.4B" (§1.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compresskit import Preset

#: Name regexes (full match) of the BERT-family modules each group replaces.
ATTENTION = r"(.*\.)?layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
FFN_IN = r"(.*\.)?layer\.\d+\.intermediate\.dense"
FFN_OUT = r"(.*\.)?layer\.\d+\.output\.dense"
WORD_EMBEDDING = r"(.*\.)?embeddings\.word_embeddings"


def kroneckerbert_groups(
    attention: Mapping[str, Any],
    ffn_in: Mapping[str, Any],
    ffn_out: Mapping[str, Any],
    embedding_n: int,
    num_terms: int = 1,
    embedding_terms: int = 1,
) -> tuple[dict[str, Any], ...]:
    """The four KroneckerBERT groups (shared group schema), each with its shape option and ``num_terms``."""

    def group(
        name: str, types: list[str], names: str, options: Mapping[str, Any], terms: int
    ) -> dict[str, Any]:
        return {
            "name": name,
            "types": types,
            "names": names,
            "decomposition": "kronecker",
            "options": {**options, "num_terms": terms},
        }

    return (
        group("attention", ["Linear"], ATTENTION, attention, num_terms),
        group("ffn_in", ["Linear"], FFN_IN, ffn_in, num_terms),
        group("ffn_out", ["Linear"], FFN_OUT, ffn_out, num_terms),
        group("word_embedding", ["Embedding"], WORD_EMBEDDING, {"embedding_n": embedding_n}, embedding_terms),
    )


class KroneckerBert8(Preset):
    """KroneckerBERT8 (Table 1): attention B 2×2, FFN A 8×2 / 2×8, embedding B 1×8; one term."""

    name = "kroneckerbert8"
    groups = kroneckerbert_groups(
        attention={"b_shape": [2, 2]},
        ffn_in={"a_shape": [8, 2]},
        ffn_out={"a_shape": [2, 8]},
        embedding_n=8,
    )


class KroneckerBert21(Preset):
    """KroneckerBERT21 (Table 1): attention B 2×16, FFN A 16×2 / 2×16, embedding B 1×16; one term."""

    name = "kroneckerbert21"
    groups = kroneckerbert_groups(
        attention={"b_shape": [2, 16]},
        ffn_in={"a_shape": [16, 2]},
        ffn_out={"a_shape": [2, 16]},
        embedding_n=16,
    )


class KroneckerBert5(Preset):
    """KroneckerBERT5 (assumed shapes, see the module docstring): 4 terms, B 2×16 / 8×2 / 2×8; n = 12."""

    name = "kroneckerbert5"
    groups = kroneckerbert_groups(
        attention={"b_shape": [2, 16]},
        ffn_in={"b_shape": [8, 2]},
        ffn_out={"b_shape": [2, 8]},
        embedding_n=12,
        num_terms=4,
    )


PRESETS: list[type[Preset]] = [KroneckerBert8, KroneckerBert21, KroneckerBert5]
