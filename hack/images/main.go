// Command images builds the lab's container images (package
// pkg/lab/imageset) into the machine's image cache, prints what it built or
// reused and their sizes on stderr, and the cache directory on stdout.
// With -push it also pushes them to a registry. Run it from the repository's
// root (hack/images.sh does): the defaults find the binaries hack/k8s.sh,
// hack/coredns.sh and make build leave, by the versions pinned in
// hack/k8s/go.mod and hack/coredns/go.mod.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/podnet/podnet/pkg/lab/imageset"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run() error {
	k8s := pinned("hack/k8s/go.mod", "k8s.io/kubernetes")
	coredns := pinned("hack/coredns/go.mod", "github.com/coredns/coredns")
	k8sModule := filepath.Join(modCache(), "k8s.io", "kubernetes@"+k8s)
	k8sDir := envOr("PODNET_K8S_DIR", "/var/cache/podnet/k8s/"+k8s)
	corednsDir := envOr("PODNET_COREDNS_DIR", "/var/cache/podnet/coredns/"+coredns)

	var o imageset.Options
	flag.StringVar(&o.CacheDir, "cache", imageset.DefaultCacheDir, "image cache `dir`")
	only := flag.String("only", "", "comma-separated `recipes` to build (default all: "+recipeNames()+")")
	// hack/k8s.sh leaves copies of pause.c and agnhost's porter certificate
	// beside agnhost; the module cache has the originals.
	flag.StringVar(&o.PauseSource, "pause-source", firstExisting(filepath.Join(k8sDir, "pause.c"),
		filepath.Join(k8sModule, "build/pause/linux/pause.c")), "pause.c")
	flag.StringVar(&o.Agnhost, "agnhost", filepath.Join(k8sDir, "agnhost"), "agnhost binary (hack/k8s.sh)")
	flag.StringVar(&o.AgnhostCerts, "agnhost-certs", firstExisting(filepath.Join(k8sDir, "agnhost-porter"),
		filepath.Join(k8sModule, "test/images/agnhost/porter")), "`dir` with agnhost's localhost.crt and localhost.key")
	flag.StringVar(&o.CoreDNS, "coredns", filepath.Join(corednsDir, "coredns"), "coredns binary (hack/coredns.sh)")
	flag.StringVar(&o.KubeProxy, "kube-proxy", filepath.Join(k8sDir, "kube-proxy"), "kube-proxy binary (hack/k8s.sh)")
	flag.StringVar(&o.PodnetBin, "podnet-bin", "bin", "`dir` with podnet, podnetd and podnetctl (make build)")
	flag.StringVar(&o.PodnetVersion, "version", "dev", "tag of docker.io/podnet/podnet")
	push := flag.String("push", "", "also push the images to the registry at this `URL` (http://host:port)")
	verbose := flag.Bool("v", false, "log every step")
	flag.Parse()
	if *only != "" {
		o.Only = strings.Split(*only, ",")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	images, err := imageset.Build(ctx, o)
	if err != nil {
		return err
	}
	took := time.Since(start)

	tw := tabwriter.NewWriter(os.Stderr, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSIZE\t\tNAMES")
	var total int64
	for _, img := range images {
		how := "built"
		if img.Cached {
			how = "cached"
		}
		total += img.Size
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", img.Recipe, mib(img.Size), how, strings.Join(img.Names, " "))
	}
	fmt.Fprintf(tw, "total\t%s\t\t%d images in %s\n", mib(total), len(images), took.Round(100*time.Millisecond))
	tw.Flush()

	if *push != "" {
		start := time.Now()
		if err := imageset.Push(ctx, images, *push); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "pushed to %s in %s\n", *push, time.Since(start).Round(100*time.Millisecond))
	}
	fmt.Println(o.CacheDir)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func recipeNames() string {
	var names []string
	for _, r := range imageset.Recipes("") {
		names = append(names, r.Name)
	}
	return strings.Join(names, ",")
}

// pinned reads the version of module from a go.mod of this repository.
func pinned(gomod, module string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "unknown"
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(module) + `\s+(v\S+)`).FindSubmatch(b)
	if m == nil {
		return "unknown"
	}
	return string(m[1])
}

func modCache() string {
	if out, err := exec.Command("go", "env", "GOMODCACHE").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); d != "" {
			return d
		}
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, "go", "pkg", "mod")
}

// firstExisting is the first path that exists, or the last one.
func firstExisting(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return paths[len(paths)-1]
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
