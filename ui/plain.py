"""User strings inside Streamlit markdown, shown as plain text: the pages'
name for :mod:`patching.core.markdown` (the notebook export escapes with the
same functions). Every value from a link, a pair, a hypothesis, a stored or
imported result goes through :func:`md_plain` (or ``st.text``/``st.code``).
"""

from patching.core.markdown import WJ, code_block, error_line, md_plain

__all__ = ["WJ", "code_block", "error_line", "md_plain"]
