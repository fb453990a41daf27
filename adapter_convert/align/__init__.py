"""Hidden-space alignment between a source (teacher) and a target (student) model.

Every method turns the streaming statistics of paired activations into two maps per adapted
module, which ``fold`` applies to the adapter without changing its rank:

* ``P_in`` (d_in_teacher x d_in_student): student input -> teacher input, so ``A' = A P_in``;
* ``P_out`` (d_out_student x d_out_teacher): teacher output -> student output, so ``B' = P_out B``.

Then ``s B' A' x_s = P_out (s B A) (P_in x_s)``: the teacher's adapter, read and written through
the alignment. Adding a method is adding one module here named after it, with ``NAME`` and
``fit_map(stats, kind, assigned, *, ridge)``, and listing its name and help in
``alignment_methods.METHODS``: ``--align``'s choices, its help and the plan's validation read that
table, and ``fit.py`` loads the module when a fit runs.
"""
