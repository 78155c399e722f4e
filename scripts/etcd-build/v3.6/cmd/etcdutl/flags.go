package main

import "github.com/spf13/cobra"

// etcdutl 3.6 has no global flags besides --write-out.
func addFlags(*cobra.Command) {}
