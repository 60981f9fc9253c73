"""The report a researcher reads: per-epoch curves, cluster quality (Fig. 4), t-SNE by camera
(Fig. 1/5), retrieval examples (Fig. 7) and comparison tables (Table III).

Each module turns data (tables, arrays, summaries) into a matplotlib Figure or a DataFrame;
only :func:`pipeline.report.figures.save_figure` writes a file. The stages ``pipeline report``
and ``pipeline compare`` read the inputs and write the outputs.
"""
