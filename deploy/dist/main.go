// Command dist builds a Moatless release: static binaries for Linux
// amd64 and arm64, a Debian package for each (systemd units, a moatless
// system user, /var/lib/moatless) and SHA256SUMS over all of them. It is
// its own module so that the packager's dependencies stay out of the
// binary's. Run it from the repository with "make dist".
//
//	go run . -repo ../.. -out ../../dist -version 1.2.3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
)

func main() {
	var c Config
	flag.StringVar(&c.Repo, "repo", "../..", "the Moatless repository `directory`")
	flag.StringVar(&c.Out, "out", "dist", "output `directory` (created; files in it are replaced)")
	flag.StringVar(&c.Version, "version", "0.0.0-dev", "release `version` (semver, without the v)")
	arches := flag.String("arch", "amd64,arm64", "comma-separated Linux `architectures`")
	flag.Parse()
	c.Arches = splitComma(*arches)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	files, err := Build(ctx, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dist:", err)
		os.Exit(1)
	}
	for _, f := range files {
		fmt.Println(f)
	}
}
