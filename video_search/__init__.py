"""Search a video library: one query, moments ranked across every video (video corpus moment retrieval).

`VideoLibrary(folder).search(query, top_k)`; the commands `lddetr-index`, `lddetr-search`, `lddetr-eval-library`.
`docs/video_search.md` has the design, the measurements and the plan for millions of videos.
"""

from .library import SearchResult, VideoLibrary
from .library_folder import LibraryError, LibraryInfo

__all__ = ["LibraryError", "LibraryInfo", "SearchResult", "VideoLibrary"]
