package images

import (
	"errors"
	"fmt"
	"os/exec"
	"path"
	"strconv"
	"strings"
)

// Names of the built-in programs, as found in Program.Builtin and accepted by
// RunBuiltin.
const (
	BuiltinNginx   = "nginx"   // nginx's welcome page; Args: --port=N (repeatable)
	BuiltinHTTPD   = "httpd"   // Apache's "It works!" page; Args: --port=N (repeatable)
	BuiltinAgnhost = "agnhost" // Args: an agnhost subcommand and its flags
	BuiltinPause   = "pause"   // blocks until stopped, like registry.k8s.io/pause
)

// ContainerPATH is the PATH container images set (Docker's default). The lab
// should give it to the processes it runs, so that shell scripts in busybox
// and netshoot containers find the host's tools in the sbin directories too.
const ContainerPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultHTTPPort is where the nginx and httpd built-ins listen when the
// container declares no port, as the real images do.
const DefaultHTTPPort = 80

var (
	// ErrUnsupported marks an image (or a command within a known image) that
	// the lab cannot run. Its message says what the lab supports.
	ErrUnsupported = errors.New("not supported by the podnet lab")
	// ErrMissingTool marks a container command whose host program is not
	// installed. Its message names the tool and, where known, the Debian
	// package that provides it.
	ErrMissingTool = errors.New("host tool not installed")
)

// supportedImages is the list shown to the user when an image is refused.
const supportedImages = "busybox, nicolaka/netshoot, nginx, httpd, registry.k8s.io/pause, registry.k8s.io/e2e-test-images/agnhost or registry.k8s.io/coredns/coredns"

// Program is what the lab runs for one container: either a built-in (run with
// RunBuiltin inside the pod's netns) or an executable of the host.
type Program struct {
	// Builtin names a built-in program (one of the Builtin constants); empty
	// for a host executable.
	Builtin string
	// Path is the absolute path of the host executable; empty for a built-in.
	Path string
	// Args are the arguments, not including the program name (argv[0]).
	Args []string
}

// String renders the program for logs and events.
func (p Program) String() string {
	var b strings.Builder
	if p.Builtin != "" {
		b.WriteString("builtin " + p.Builtin)
	} else {
		b.WriteString(p.Path)
	}
	for _, a := range p.Args {
		b.WriteByte(' ')
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$;&|<>*?") {
			a = strconv.Quote(a)
		}
		b.WriteString(a)
	}
	return b.String()
}

// unsupportedError is an ErrUnsupported with a message written for the user.
type unsupportedError struct{ msg string }

func (e *unsupportedError) Error() string        { return e.msg }
func (e *unsupportedError) Is(target error) bool { return target == ErrUnsupported }

type kind int

const (
	kindShell   kind = iota // run the command with the host's tools
	kindNginx               // built-in nginx, or host tools
	kindHTTPD               // built-in httpd, or host tools
	kindAgnhost             // built-in agnhost, or host tools
	kindPause               // only /pause
	kindCoreDNS             // only /coredns, the binary hack/coredns.sh builds
)

// imageSpec is what the lab knows of an image: its kind and the ENTRYPOINT
// and CMD of the real image, to which the pod's command and args apply.
type imageSpec struct {
	kind       kind
	entrypoint []string
	cmd        []string
}

// lookupImage finds the spec of an image reference, ignoring registry
// aliases, tag and digest.
func lookupImage(ref string) (imageSpec, bool) {
	switch normalize(ref) {
	case "busybox", "registry.k8s.io/e2e-test-images/busybox":
		return imageSpec{kind: kindShell, cmd: []string{"sh"}}, true
	case "nicolaka/netshoot", "ghcr.io/nicolaka/netshoot":
		// The real image's CMD is zsh; sh behaves the same without a tty
		// (it exits at once) and needs no extra host package.
		return imageSpec{kind: kindShell, cmd: []string{"sh"}}, true
	case "nginx", "registry.k8s.io/e2e-test-images/nginx":
		return imageSpec{kind: kindNginx,
			entrypoint: []string{"/docker-entrypoint.sh"},
			cmd:        []string{"nginx", "-g", "daemon off;"}}, true
	case "httpd", "registry.k8s.io/e2e-test-images/httpd":
		return imageSpec{kind: kindHTTPD, cmd: []string{"httpd-foreground"}}, true
	case "registry.k8s.io/e2e-test-images/agnhost":
		return imageSpec{kind: kindAgnhost, entrypoint: []string{"/agnhost"}}, true
	case "registry.k8s.io/pause":
		return imageSpec{kind: kindPause, entrypoint: []string{"/pause"}}, true
	case "registry.k8s.io/coredns/coredns", "registry.k8s.io/coredns", "coredns/coredns":
		return imageSpec{kind: kindCoreDNS, entrypoint: []string{"/coredns"}}, true
	}
	return imageSpec{}, false
}

// normalize reduces an image reference to its repository: the digest and tag
// are dropped, Docker Hub's registry names and "library/" are removed, and
// k8s.gcr.io is spelled registry.k8s.io.
func normalize(ref string) string {
	name := strings.TrimSpace(ref)
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	registry, repo := "docker.io", name
	if i := strings.IndexByte(name, '/'); i >= 0 {
		if first := name[:i]; strings.ContainsAny(first, ".:") || first == "localhost" {
			registry, repo = first, name[i+1:]
		}
	}
	switch registry {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return strings.TrimPrefix(repo, "library/")
	case "k8s.gcr.io":
		registry = "registry.k8s.io"
	}
	return registry + "/" + repo
}

// Resolve maps a container to the program the lab runs for it. command and
// args follow Kubernetes: command replaces the image's ENTRYPOINT, args its
// CMD (and a command given without args drops the CMD). ports are the
// container's declared ports; the nginx and httpd built-ins listen on them
// (on DefaultHTTPPort when there are none).
//
// Host executables are looked up in this process's PATH (Program.Path is
// absolute); the lab should run them with ContainerPATH in their environment.
func Resolve(image string, command, args []string, ports []int32) (Program, error) {
	spec, ok := lookupImage(image)
	if !ok {
		return Program{}, &unsupportedError{fmt.Sprintf(
			"image %q is not one the podnet lab can run: use %s", image, supportedImages)}
	}
	argv := containerArgv(spec, command, args)
	if len(argv) == 0 || argv[0] == "" {
		return Program{}, fmt.Errorf("resolve image %q: the container has no command to run", image)
	}
	name := path.Base(argv[0])
	switch spec.kind {
	case kindNginx:
		if name == "docker-entrypoint.sh" {
			// The entrypoint script runs its arguments; with none, the server.
			if len(argv) == 1 {
				return serverProgram(BuiltinNginx, ports), nil
			}
			argv, name = argv[1:], path.Base(argv[1])
		}
		if name == "nginx" || name == "nginx-debug" {
			return serverProgram(BuiltinNginx, ports), nil
		}
	case kindHTTPD:
		switch name {
		case "httpd", "httpd-foreground", "apachectl", "apache2":
			return serverProgram(BuiltinHTTPD, ports), nil
		}
	case kindAgnhost:
		if name == "agnhost" {
			return agnhostProgram(argv[1:])
		}
	case kindPause:
		if name == "pause" {
			return Program{Builtin: BuiltinPause}, nil
		}
		return Program{}, &unsupportedError{fmt.Sprintf(
			"image %q has only /pause: the podnet lab cannot run %q in it", image, argv[0])}
	case kindCoreDNS:
		if name == "coredns" {
			return coreDNSProgram(image, argv[1:])
		}
		return Program{}, &unsupportedError{fmt.Sprintf(
			"image %q has only /coredns: the podnet lab cannot run %q in it", image, argv[0])}
	case kindShell:
		// "busybox ping ..." runs the applet; the host has the tool itself.
		if name == "busybox" && len(argv) > 1 {
			argv = argv[1:]
		}
	}
	return hostProgram(image, argv)
}

// containerArgv applies Kubernetes' command/args rules to an image.
func containerArgv(spec imageSpec, command, args []string) []string {
	switch {
	case len(command) > 0 && len(args) > 0:
		return concat(command, args)
	case len(command) > 0:
		return concat(command, nil)
	case len(args) > 0:
		return concat(spec.entrypoint, args)
	default:
		return concat(spec.entrypoint, spec.cmd)
	}
}

func concat(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

// serverProgram is a built-in web server on the container's ports.
func serverProgram(builtin string, ports []int32) Program {
	var args []string
	seen := map[int32]bool{}
	for _, p := range ports {
		if p > 0 && p <= 65535 && !seen[p] {
			seen[p] = true
			args = append(args, "--port="+strconv.Itoa(int(p)))
		}
	}
	if len(args) == 0 {
		args = []string{"--port=" + strconv.Itoa(DefaultHTTPPort)}
	}
	return Program{Builtin: builtin, Args: args}
}

// agnhostProgram checks that the agnhost subcommand (the first argument that
// is not a flag) is one the lab implements.
func agnhostProgram(args []string) (Program, error) {
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			continue
		}
		if !agnhostSupports(a) {
			return Program{}, &unsupportedError{fmt.Sprintf(
				"agnhost subcommand %q is not in the podnet lab's built-in agnhost: use %s", a, agnhostSubcommands)}
		}
		break
	}
	return Program{Builtin: BuiltinAgnhost, Args: concat(args, nil)}, nil
}

// hostProgram finds argv[0] among the host's executables. Only the base name
// counts: the image's paths (/bin/sh, /usr/bin/wget) mean the host's tool of
// that name.
func hostProgram(image string, argv []string) (Program, error) {
	tool := path.Base(argv[0])
	p, err := exec.LookPath(tool)
	if err != nil {
		hint := ""
		if pkg := debianPackage(tool); pkg != "" {
			hint = "; install the Debian package " + pkg
		}
		return Program{}, fmt.Errorf("run %q for image %q: %w: the lab runs container commands with the host's programs and %q is not in PATH%s",
			argv[0], image, ErrMissingTool, tool, hint)
	}
	return Program{Path: p, Args: concat(argv[1:], nil)}, nil
}

// debianPackage names the Debian (bookworm) package that provides a tool
// commonly run in busybox and network-debug containers, or "".
func debianPackage(tool string) string {
	switch tool {
	case "sh":
		return "dash"
	case "bash", "zsh", "curl", "wget", "tcpdump", "socat", "nmap", "ethtool",
		"iptables", "conntrack", "telnet", "jq", "busybox", "iperf", "iperf3",
		"fping", "hping3", "traceroute", "ncat", "whois", "openssl", "hostname",
		"grep", "sed":
		return tool
	case "traceroute6":
		return "traceroute"
	case "sleep", "cat", "echo", "env", "true", "false", "date", "ls", "timeout", "tail", "head":
		return "coreutils"
	case "ping", "ping6":
		return "iputils-ping"
	case "arping":
		return "iputils-arping"
	case "tracepath":
		return "iputils-tracepath"
	case "nc", "netcat":
		return "netcat-openbsd"
	case "nslookup", "dig", "nsupdate":
		return "bind9-dnsutils"
	case "host":
		return "bind9-host"
	case "drill":
		return "ldnsutils"
	case "ip", "ss", "bridge", "tc":
		return "iproute2"
	case "netstat", "ifconfig", "route", "arp":
		return "net-tools"
	case "mtr":
		return "mtr-tiny"
	case "nft":
		return "nftables"
	case "ps", "top", "watch":
		return "procps"
	case "awk":
		return "mawk"
	}
	return ""
}
