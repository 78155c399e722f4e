// etcdctl built from etcd's published Go module, for etcdguard's tests only.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
