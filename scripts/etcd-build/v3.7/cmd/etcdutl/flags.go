package main

import (
	"time"

	"github.com/spf13/cobra"

	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
)

// etcdutl 3.7 adds the global --timeout flag: how long to wait for the data dir's flock.
func addFlags(root *cobra.Command) {
	root.PersistentFlags().DurationVar(&etcdutl.FlockTimeout, "timeout", 10*time.Second,
		"time to wait to obtain a file lock on the db file, 0 to block indefinitely")
}
