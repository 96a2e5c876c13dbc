"""Data in, text or PNG out: bench tables and Markdown (bench), the budget curve
(budget), verify's table (verify), the optimize summary (markdown), plots. Library code
never imports this room."""
