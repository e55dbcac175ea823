"""Collections: live state held in memory, snapshots, ingestion of images, and the one search
pipeline that the CLI, the Python API and the HTTP service share."""
