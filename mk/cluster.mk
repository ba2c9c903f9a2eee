## cluster: 3 servers and 2 clients on 127.0.0.1 (ports 17xxx), prints how to query them; Ctrl-C stops them all (CLUSTER_SECONDS=N stops after N s)
cluster: build
	./scripts/cluster.sh
.PHONY: cluster
