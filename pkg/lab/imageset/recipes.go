package imageset

import (
	"io/fs"

	"github.com/podnet/podnet/pkg/lab/oci"
)

// recipe is how one image is made: its layers, lowest first, and its
// config. Recipes are data: the cache key is their JSON encoding.
type recipe struct {
	Name   string
	Names  []string
	Layers []layer
	Config oci.Config
}

// layer is what one layer holds. It is assembled in this order: busybox,
// packages, files; then the shared libraries its ELF objects need are added
// from Debian packages, and commands of the layers below that a package
// of this layer also provides are pointed at the package's.
type layer struct {
	// Busybox is a Debian package of busybox (busybox-static, or busybox,
	// whose shell and applets find commands by PATH, not among its own
	// applets first) with a hardlink per applet.
	Busybox string `json:",omitempty"`
	// Packages are extracted from Debian packages (never installed: no
	// maintainer scripts run, so files those scripts make are Files).
	Packages []pkg  `json:",omitempty"`
	Files    []file `json:",omitempty"`
}

type pkg struct {
	Name string
	// Only keeps just these paths of the package (path.Match patterns; a
	// directory keeps what is under it).
	Only []string `json:",omitempty"`
}

// file is one file of a layer: from an input (a binary built elsewhere),
// inline content, a symlink or a directory.
type file struct {
	Path    string
	Input   string      `json:",omitempty"`
	Content string      `json:",omitempty"`
	Link    string      `json:",omitempty"`
	Dir     bool        `json:",omitempty"`
	Mode    fs.FileMode `json:",omitempty"`
}

// The inputs recipes take files from (Options names where they are).
const (
	inPause        = "pause"
	inAgnhost      = "agnhost"
	inAgnhostCert  = "agnhost-localhost.crt"
	inAgnhostKey   = "agnhost-localhost.key"
	inCoreDNS      = "coredns"
	inPodnet       = "podnet"
	inPodnetd      = "podnetd"
	inPodnetctl    = "podnetctl"
	inKubeProxy    = "kube-proxy"
	defaultPath    = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	pauseVersion   = "3.10.2"
	agnhostVersion = "2.63.0"
	// kubernetesVersion is hack/k8s/go.mod's k8s.io/kubernetes (a test
	// checks): the tag of kube-proxy's image, as kubeadm names it.
	kubernetesVersion = "v1.36.3"
)

func content(p, c string, mode fs.FileMode) file { return file{Path: p, Content: c, Mode: mode} }
func link(p, target string) file                 { return file{Path: p, Link: target} }
func dir(p string, mode fs.FileMode) file        { return file{Path: p, Dir: true, Mode: mode} }
func input(p, in string) file                    { return file{Path: p, Input: in, Mode: 0o755} }

const basePasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`

const baseGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
www-data:x:33:
nogroup:x:65534:
`

// rootFiles are the few files a root file system needs besides commands.
var rootFiles = []file{
	content("etc/passwd", basePasswd, 0o644),
	content("etc/group", baseGroup, 0o644),
	dir("root", 0o700),
	dir("tmp", 0o1777),
	dir("var/tmp", 0o1777),
	dir("home", 0o755),
}

// userland is the lowest layer of every image with more programs than
// busybox: Debian's dynamically linked busybox (with the C library), whose
// shell runs the image's real commands when PATH names them (busybox-static
// prefers its own applets: `sh -c "ip ..."` would never run iproute2's ip).
// Built the same for every image, it is one blob the registry and the nodes
// keep once.
// libgcc_s is there too, though no program names it: glibc loads it when
// a thread exits or is cancelled (without it Apache's workers abort with
// "libgcc_s.so.1 must be installed for pthread_exit to work").
var userland = layer{Busybox: "busybox", Packages: []pkg{{Name: "libgcc-s1", Only: []string{"lib/*/libgcc_s.so.1", "usr/lib/*/libgcc_s.so.1"}}}, Files: rootFiles}

// glibc is what a layer of Debian programs needs besides their libraries.
var glibc = []file{
	content("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n", 0o644),
}

// corednsLayer is CoreDNS's binary alone: the coredns image, and agnhost's
// /coredns (which the DNS e2e tests run), share it.
var corednsLayer = layer{Files: []file{input("coredns", inCoreDNS)}}

func recipes(podnetVersion string) []recipe {
	return []recipe{
		{
			// The real pause.c of the Kubernetes release, compiled static.
			Name:   "pause",
			Names:  tags("registry.k8s.io/pause", pauseVersion, "3.10.1", "3.10"),
			Layers: []layer{{Files: []file{input("pause", inPause)}}},
			Config: oci.Config{User: "65535:65535", Entrypoint: []string{"/pause"}},
		},
		{
			Name:  "busybox",
			Names: append(tags("registry.k8s.io/e2e-test-images/busybox", "1.37.0-1"), tags("docker.io/library/busybox", "latest", "1.36", "stable")...),
			// Debian's busybox (1.35) crashes (SIGSEGV) in `wget -T N`,
			// which the e2e framework and the lab's tests type: GNU wget,
			// which takes the same flags, stands in for that applet.
			Layers: []layer{userland, {Packages: []pkg{{Name: "wget"}}, Files: glibc}},
			Config: oci.Config{Env: []string{defaultPath}, Cmd: []string{"sh"}},
		},
		agnhostRecipe(),
		nginxRecipe(),
		httpdRecipe(),
		netshootRecipe(),
		{
			Name:   "coredns",
			Names:  tags("registry.k8s.io/coredns/coredns", CoreDNSVersion),
			Layers: []layer{corednsLayer},
			Config: oci.Config{Entrypoint: []string{"/coredns"}, ExposedPorts: []string{"53/tcp", "53/udp"}},
		},
		podnetRecipe(podnetVersion),
		kubeProxyRecipe(),
		glibcDNSTestingRecipe(),
	}
}

// tags is repo:tag for every tag.
func tags(repo string, tags ...string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = repo + ":" + t
	}
	return out
}

// agnhostRecipe follows test/images/agnhost/Dockerfile: the tools it adds to
// its base (dig, curl, nc, ip/ss, iperf, bash, ipcs), /coredns, the porter's
// test certificate, /uploads, the agnhost-2 alias, and the user and group the
// security-context e2e tests look for.
func agnhostRecipe() recipe {
	const repo = "registry.k8s.io/e2e-test-images/agnhost"
	return recipe{
		Name: "agnhost",
		// 2.45: the tag network-policy-api's conformance manifests name.
		Names: tags(repo, agnhostVersion, "2.55", "2.53", "2.45", "latest"),
		Layers: []layer{
			userland,
			{
				Packages: []pkg{
					{Name: "bash"}, {Name: "bind9-dnsutils"}, {Name: "curl"}, {Name: "netcat-openbsd"}, {Name: "wget"},
					{Name: "iproute2"}, {Name: "iperf"}, {Name: "netbase"},
					{Name: "util-linux", Only: []string{"usr/bin/ipcs"}},
					// The DNS specs' queriers run getent (upstream's Alpine has musl's).
					{Name: "libc-bin", Only: []string{"usr/bin/getent"}},
				},
				Files: append([]file{
					// update-alternatives' links, which no maintainer script makes here.
					link("bin/nc", "nc.openbsd"),
					link("usr/local/bin/iperf", "/usr/bin/iperf"),
					content("etc/passwd", basePasswd+"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n", 0o644),
					content("etc/group", baseGroup+"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n", 0o644),
					dir("home/user-defined-in-image", 0o755),
				}, glibc...),
			},
			corednsLayer,
			{Files: []file{
				input("agnhost", inAgnhost),
				link("agnhost-2", "agnhost"),
				dir("uploads", 0o755),
				{Path: "localhost.crt", Input: inAgnhostCert, Mode: 0o644},
				{Path: "localhost.key", Input: inAgnhostKey, Mode: 0o644},
			}},
		},
		Config: oci.Config{
			Env:          []string{defaultPath},
			Entrypoint:   []string{"/agnhost"},
			Cmd:          []string{"pause"},
			ExposedPorts: []string{"80", "8080", "8081", "9376", "5000"},
		},
	}
}

const nginxConf = `# nginx as the official image runs it: in the foreground (the image's
# command says "daemon off;"), logging to the container's stdout and stderr.
user  nginx;
worker_processes  auto;

error_log  /var/log/nginx/error.log notice;
pid        /run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';
    access_log  /var/log/nginx/access.log  main;

    sendfile           on;
    keepalive_timeout  65;

    include /etc/nginx/conf.d/*.conf;
}
`

const nginxDefaultConf = `server {
    listen       80;
    server_name  localhost;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
`

const nginx50x = "<!DOCTYPE html>\n<html>\n<head><title>Error</title></head>\n<body>\n<h1>An error occurred.</h1>\n" +
	"<p>Sorry, the page you are looking for is currently unavailable.</p>\n</body>\n</html>\n"

// nginxRecipe is Debian's nginx laid out like the official image: its
// configuration, the welcome page Debian ships, logs to stdout/stderr.
func nginxRecipe() recipe {
	return recipe{
		Name: "nginx",
		Names: append(tags("docker.io/library/nginx", "latest"),
			tags("registry.k8s.io/e2e-test-images/nginx", "1.15-4", "1.27-0")...),
		Layers: []layer{
			userland,
			{
				Packages: []pkg{
					{Name: "nginx"},
					{Name: "nginx-common", Only: []string{"etc/nginx/mime.types", "usr/share/nginx/html/index.html"}},
				},
				Files: append([]file{
					content("etc/nginx/nginx.conf", nginxConf, 0o644),
					content("etc/nginx/conf.d/default.conf", nginxDefaultConf, 0o644),
					content("usr/share/nginx/html/50x.html", nginx50x, 0o644),
					link("var/log/nginx/access.log", "/dev/stdout"),
					link("var/log/nginx/error.log", "/dev/stderr"),
					dir("var/lib/nginx", 0o755),
					dir("var/cache/nginx", 0o755),
					dir("run", 0o755),
					content("etc/passwd", basePasswd+"nginx:x:101:101:nginx user:/nonexistent:/bin/false\n", 0o644),
					content("etc/group", baseGroup+"nginx:x:101:\n", 0o644),
				}, glibc...),
			},
		},
		Config: oci.Config{
			Env:          []string{defaultPath},
			Cmd:          []string{"nginx", "-g", "daemon off;"},
			ExposedPorts: []string{"80"},
			StopSignal:   "SIGQUIT",
		},
	}
}

// httpdConf is a minimal Apache configuration, at the path Debian's apache2
// reads by default (so `httpd -t` in the container checks it).
const httpdConf = `# Apache as the official httpd image runs it, reduced to what serving
# /usr/local/apache2/htdocs on port 80 needs.
ServerRoot "/etc/apache2"
ServerName localhost
Listen 80

LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so

User daemon
Group daemon

PidFile /usr/local/apache2/logs/httpd.pid
DefaultRuntimeDir /usr/local/apache2/logs
ErrorLog /proc/self/fd/2
LogLevel warn
LogFormat "%h %l %u %t \"%r\" %>s %b" common
CustomLog /proc/self/fd/1 common

TypesConfig /etc/apache2/mime.types
DocumentRoot "/usr/local/apache2/htdocs"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "/usr/local/apache2/htdocs">
    Require all granted
</Directory>
DirectoryIndex index.html
`

const httpdMimeTypes = `text/html	html htm
text/plain	txt
text/css	css
application/javascript	js
application/json	json
image/png	png
image/jpeg	jpg jpeg
image/svg+xml	svg
`

const httpdForeground = `#!/bin/sh
set -e
# Apache refuses to start over the pid file of a container's earlier run.
rm -f /usr/local/apache2/logs/httpd.pid
exec httpd -DFOREGROUND "$@"
`

// httpdRecipe is Debian's apache2 with the official image's layout and
// command (httpd-foreground) and its "It works!" page.
func httpdRecipe() recipe {
	modules := []string{"usr/sbin/apache2"}
	for _, m := range []string{"mpm_event", "authz_core", "dir", "mime"} {
		modules = append(modules, "usr/lib/apache2/modules/mod_"+m+".so")
	}
	return recipe{
		Name:  "httpd",
		Names: tags("docker.io/library/httpd", "latest", "2.4"),
		Layers: []layer{
			userland,
			{
				Packages: []pkg{{Name: "apache2-bin", Only: modules}},
				Files: append([]file{
					content("etc/apache2/apache2.conf", httpdConf, 0o644),
					content("etc/apache2/mime.types", httpdMimeTypes, 0o644),
					content("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n", 0o644),
					dir("usr/local/apache2/logs", 0o755),
					link("usr/local/apache2/bin/httpd", "/usr/sbin/apache2"),
					content("usr/local/bin/httpd-foreground", httpdForeground, 0o755),
				}, glibc...),
			},
		},
		Config: oci.Config{
			Env:          []string{"PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			WorkingDir:   "/usr/local/apache2",
			Cmd:          []string{"httpd-foreground"},
			ExposedPorts: []string{"80"},
			StopSignal:   "SIGWINCH",
		},
	}
}

// netshootRecipe is a netshoot-like toolbox of Debian's network tools over
// busybox's userland.
func netshootRecipe() recipe {
	var pkgs []pkg
	for _, n := range []string{"bash", "iproute2", "iputils-ping", "curl", "bind9-dnsutils", "tcpdump",
		"traceroute", "netcat-openbsd", "iperf3", "nftables", "conntrack", "ethtool", "netbase"} {
		pkgs = append(pkgs, pkg{Name: n})
	}
	return recipe{
		Name:  "netshoot",
		Names: tags("docker.io/nicolaka/netshoot", "latest"),
		Layers: []layer{
			userland,
			{Packages: pkgs, Files: append([]file{
				link("bin/nc", "nc.openbsd"),
				link("usr/bin/traceroute", "traceroute.db"),
			}, glibc...)},
		},
		Config: oci.Config{Env: []string{defaultPath}, Cmd: []string{"bash"}},
	}
}

// podnetRecipe is podnet's own image: the three binaries and the nft that
// podnetd runs, over busybox (a shell for the DaemonSet's install step).
func podnetRecipe(version string) recipe {
	return recipe{
		Name:  "podnet",
		Names: tags("docker.io/podnet/podnet", version),
		Layers: []layer{
			userland,
			{Packages: []pkg{{Name: "nftables"}}, Files: glibc},
			{Files: []file{
				input("usr/local/bin/podnet", inPodnet),
				input("usr/local/bin/podnetd", inPodnetd),
				input("usr/local/bin/podnetctl", inPodnetctl),
			}},
		},
		Config: oci.Config{
			Env:    []string{defaultPath},
			Cmd:    []string{"podnetd"},
			Labels: map[string]string{"org.opencontainers.image.title": "podnet", "org.opencontainers.image.version": version},
		},
	}
}

// kubeProxyRecipe is kube-proxy's image as kubeadm deploys it
// (registry.k8s.io/kube-proxy:<version>): the kube-proxy the lab built,
// and the nft its nftables mode runs.
func kubeProxyRecipe() recipe {
	return recipe{
		Name:  "kube-proxy",
		Names: tags("registry.k8s.io/kube-proxy", kubernetesVersion),
		Layers: []layer{
			userland,
			{Packages: []pkg{{Name: "nftables"}, {Name: "conntrack"}}, Files: glibc},
			{Files: []file{input("usr/local/bin/kube-proxy", inKubeProxy)}},
		},
		Config: oci.Config{Env: []string{defaultPath}, Entrypoint: []string{"/usr/local/bin/kube-proxy"}},
	}
}

// glibcDNSTestingRecipe is the e2e framework's glibc-dns-testing image
// (the DNS conformance specs' "jessie" querier): Debian's dig and glibc's
// resolver (getent) beside CoreDNS, as test/images/glibc-dns-testing's
// Dockerfile makes it from a Debian base.
func glibcDNSTestingRecipe() recipe {
	return recipe{
		Name:  "glibc-dns-testing",
		Names: tags("registry.k8s.io/e2e-test-images/glibc-dns-testing", "2.0.0"),
		Layers: []layer{
			userland,
			{
				Packages: []pkg{{Name: "bind9-dnsutils"}, {Name: "netbase"}, {Name: "libc-bin", Only: []string{"usr/bin/getent"}}},
				Files:    glibc,
			},
			corednsLayer,
		},
		Config: oci.Config{Env: []string{defaultPath}},
	}
}
