"""Videos -> frames: opening, decoding and sampling frames, and the reasons bad files get.

Used by the featurize and labelling jobs, the preview GIF and the report thumbnails. Knows nothing of Beam
or the model. `video.frames` decodes and samples in bounded memory, `video.probe` says what an unreadable
file is, and `video.isolated` runs decoding in a child process with a time limit.
"""
