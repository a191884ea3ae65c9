"""Fused CPU kernels shared by the methods and the training loop, and huge-page placement of large tables.

``native`` compiles ``_native.c`` (shipped in the wheel) at first use and runs its kernels: seeded hash
rows, the hashing trick's and ROBE's serving lookups, a prefetching row gather, quantized rows, TT-Rec,
one grouped lookup over every field of a per-field plan (:class:`LookupPlan` over :class:`FieldKernel`
descriptors) and SparseAdam's row update. Every function returns None (or False) where the kernel cannot
run, and the caller then uses its torch reference. Why the kernels are built at first use and not at
install time is explained in the ``embadvisor.kernels.native`` docstring. ``hugepages`` moves large CPU
tensors onto transparent huge pages.

This package sits below ``methods/`` and ``tasks/``. It imports neither of them, nor the advisor
(``tests/kernels_tests/test_kernels_layering.py`` checks this).

Adding a kernel kind
--------------------
A method serves through the grouped lookup by returning a :class:`FieldKernel` from its module's
``field_kernel()`` (see ``CompressedEmbedding.field_kernel``). ``EmbeddingCollection`` fuses every field
that returns one, whatever the method, so a lookup that one of the existing kinds expresses (ROWS, REMAP,
QR_MULT, QR_ADD, PROJECTED, QUANT8, QUANT16, TT) needs ``field_kernel()`` and nothing else.

A lookup that none of them expresses needs a new kind, and a new kind is added in this package and
nowhere else (not in the collection, the solver or the advisor):

1. ``_native.c``: add ``K_<NAME>`` to the kind enum above ``ea_grouped_lookup``, and one
   ``else if (kind == K_<NAME>)`` branch in its per-field loop: a ``FIELD_LOOP`` whose prefetch addresses
   the row DIST lookups ahead and whose body writes the ``d`` floats of ``out`` for one id. The
   descriptor slots are ``{kind, table, width, start, aux, k, aux_start, n}``.
2. ``native.py``: the constant with the same number on the line of kinds, its table dtype in ``_DTYPES``
   (and its ``aux`` dtype in ``_AUX_DTYPES``), any layout rule in :meth:`FieldKernel.usable`, any slot
   that it fills differently in ``LookupPlan.__init__``, and ``_ABI`` raised by one in both files (the
   cache key already changes with the source).
3. Re-export the constant here, return it from the method's ``field_kernel()``, and add the method to the
   per-field serving tests in ``tests/methods_tests/test_serving_paths.py``, which compare the kernel
   with the torch forward.

The kinds stay a closed enum in C by design. A per-method kernel spec (a function pointer or callback per
field) would add an indirect call per row in the hot loop: the loop would no longer be one kind's body,
inlined next to its prefetches and vectorised over the row, for a fixed field.
"""

from embadvisor.kernels.hugepages import advise_hugepages_, hugepage_empty
from embadvisor.kernels.native import (
    PROJECTED,
    QR_ADD,
    QR_MULT,
    QUANT8,
    QUANT16,
    REMAP,
    ROWS,
    TT,
    FieldKernel,
    LookupPlan,
    available,
    disabled,
    embed,
    embedding,
    grouped_lookup,
    hash_gather,
    hash_rows,
    quant_gather,
    robe_gather,
    sparse_adam,
    tt_lookup,
    tt_params,
)

__all__ = [
    "PROJECTED",
    "QR_ADD",
    "QR_MULT",
    "QUANT8",
    "QUANT16",
    "REMAP",
    "ROWS",
    "TT",
    "FieldKernel",
    "LookupPlan",
    "advise_hugepages_",
    "available",
    "disabled",
    "embed",
    "embedding",
    "grouped_lookup",
    "hash_gather",
    "hash_rows",
    "hugepage_empty",
    "quant_gather",
    "robe_gather",
    "sparse_adam",
    "tt_lookup",
    "tt_params",
]
