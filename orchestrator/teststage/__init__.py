"""The test stage: LAVA jobs rendered from what was published, submitted, awaited, judged; local boot."""
