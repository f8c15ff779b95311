"""The study report: its sections (``writer`` and ``sections``), figures, the HTML page and
the read-only view of the study every section takes (``view``)."""
