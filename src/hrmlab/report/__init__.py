"""Results people can look at: tables, charts, episode animations, HTML reports and run comparison.

Entry points for the CLI: `write_report(run_dir)` (`hrmlab report`), `render_episode(...)`
(`hrmlab render`) and `compare_runs(dirs)` (`hrmlab results`).
"""

from hrmlab.report.animate import (Disagreement, pick_disagreements, render_diffusion, render_episode,
                                   render_replay)
from hrmlab.report.replay import EpisodeReplay, ForecasterTrack, replay_episode
from hrmlab.report.report import compare_runs, write_report
from hrmlab.report.rundir import RunDir, load_run

__all__ = ["Disagreement", "EpisodeReplay", "ForecasterTrack", "RunDir", "compare_runs", "load_run",
           "pick_disagreements", "render_diffusion", "render_episode", "render_replay", "replay_episode",
           "write_report"]
