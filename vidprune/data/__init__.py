"""The accuracy side's input pipeline: decode real video files, sample clips, transform them, and read
datasets from list files or class folders (plus a synthetic motion benchmark that runs anywhere)."""
