"""The passes, on the graph only: find linear forms (linear), the ops between them
(middle, activations), chains and their safety rules (chains), the profit rule (cost), the
fold (fold), and the three rules built on them: whole-block LayerCollapse (whole_block),
partial collapse (partial); every decision lands in the report (report)."""
