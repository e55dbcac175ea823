"""The image-word association network (IWAN): graph arrays, live image edges, the compiled
Dijkstra kernels, the searchable index, text queries, saved indexes and the networkx reference."""
