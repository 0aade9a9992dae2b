package lab

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"text/template"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/dns/dnsmessage"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/podnet/podnet/pkg/lab/imageset"
	"github.com/podnet/podnet/pkg/lab/machine"
)

// coreDNSManifest is the lab's cluster DNS add-on (a template: see
// coreDNSObjects).
//
//go:embed coredns.yaml
var coreDNSManifest string

// The cluster DNS.
const (
	ClusterDomain = "cluster.local"
	// DNSReplicas is how many CoreDNS pods run (kubeadm's two; the control
	// plane is tolerated, so one worker is enough for both).
	DNSReplicas = 2
	// CoreDNSImage is the image the Deployment names; the lab runs the
	// CoreDNS that hack/coredns.sh built for it.
	CoreDNSImage = "registry.k8s.io/coredns/coredns:" + imageset.CoreDNSVersion
)

// coreDNSObjects renders the add-on and decodes its objects.
func coreDNSObjects() ([]runtime.Object, error) {
	t, err := template.New("coredns.yaml").Option("missingkey=error").Parse(coreDNSManifest)
	if err != nil {
		return nil, fmt.Errorf("parse the CoreDNS manifest: %w", err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, map[string]any{"ClusterIP": DNSServiceIP, "Domain": ClusterDomain,
		"Replicas": DNSReplicas, "Image": CoreDNSImage}); err != nil {
		return nil, fmt.Errorf("render the CoreDNS manifest: %w", err)
	}
	var objs []runtime.Object
	for i, doc := range strings.Split(buf.String(), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decode object %d of the CoreDNS manifest: %w", i+1, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// deployDNS creates the cluster DNS objects (kept if they exist).
func deployDNS(ctx context.Context, c kubernetes.Interface) error {
	objs, err := coreDNSObjects()
	if err != nil {
		return err
	}
	opts := metav1.CreateOptions{}
	for _, obj := range objs {
		var name string
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			name = "ServiceAccount " + o.Name
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		case *rbacv1.ClusterRole:
			name = "ClusterRole " + o.Name
			_, err = c.RbacV1().ClusterRoles().Create(ctx, o, opts)
		case *rbacv1.ClusterRoleBinding:
			name = "ClusterRoleBinding " + o.Name
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
		case *corev1.ConfigMap:
			name = "ConfigMap " + o.Name
			_, err = c.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, opts)
		case *appsv1.Deployment:
			name = "Deployment " + o.Name
			_, err = c.AppsV1().Deployments(o.Namespace).Create(ctx, o, opts)
		case *corev1.Service:
			name = "Service " + o.Name
			_, err = c.CoreV1().Services(o.Namespace).Create(ctx, o, opts)
		default:
			return fmt.Errorf("the CoreDNS manifest holds a %T, which the lab does not create", obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create the cluster DNS's %s: %w", name, err)
		}
	}
	return nil
}

// waitDNS waits until the CoreDNS pods are ready and kube-dns answers for
// kubernetes.default through its Service address on the control plane
// (which proves the Service path there), and says what it last saw when
// time runs out. Then it asks from every other machine, a few times each
// (the Service picks a CoreDNS pod at random), and returns those that got
// no answer and why: a partitioned topology (host-gw with a node on
// another segment) is no reason to fail `lab up`, but worth saying.
func (l *Lab) waitDNS(ctx context.Context, c kubernetes.Interface, ms []MachineSpec, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		last := ""
		d, err := c.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case d.Status.ReadyReplicas < DNSReplicas:
			last = fmt.Sprintf("%d of %d CoreDNS pods ready", d.Status.ReadyReplicas, DNSReplicas)
		default:
			if err := l.dnsAnswers(ControlPlane); err != nil {
				last = err.Error()
			}
		}
		if last == "" {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("cluster DNS not answering after %s: %s; see `podnetctl lab kubectl -- -n kube-system get pods -o wide` and %s",
				timeout, last, l.LogDir())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	var unanswered []string
	for _, m := range ms {
		if m.Name == ControlPlane {
			continue
		}
		var err error
		for range 4 {
			if err = l.dnsAnswers(m.Name); err == nil {
				break
			}
		}
		if err != nil {
			unanswered = append(unanswered, err.Error())
		}
	}
	return unanswered, nil
}

// dnsAnswers asks kube-dns for kubernetes.default from a machine.
func (l *Lab) dnsAnswers(machineName string) error {
	name := "kubernetes.default.svc." + ClusterDomain + "."
	addrs, err := queryA(machine.New(l.dir, machineName).NetNSPath(), netip.AddrPortFrom(DNSServiceIP, 53), name, time.Second)
	if err != nil || len(addrs) != 1 || addrs[0] != APIServiceIP {
		return fmt.Errorf("from %s, %s @%s gave %v (err %v), want %s", machineName, name, DNSServiceIP, addrs, err, APIServiceIP)
	}
	return nil
}

// queryA asks server for name's A records over UDP from inside the network
// namespace netnsPath (the socket is made there, so it stays there).
func queryA(netnsPath string, server netip.AddrPort, name string, timeout time.Duration) ([]netip.Addr, error) {
	h, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", netnsPath, err)
	}
	defer h.Close()
	var conn net.Conn
	if err := h.Do(func(ns.NetNS) error {
		conn, err = net.Dial("udp", server.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", server, netnsPath, err)
	}
	defer conn.Close()
	q, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", name, err)
	}
	id := uint16(rand.Uint32())
	req, err := (&dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}).Pack()
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", name, err)
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("query %s at %s: %w", name, server, err)
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("query %s at %s: %w", name, server, err)
	}
	var resp dnsmessage.Message
	if err := resp.Unpack(buf[:n]); err != nil {
		return nil, fmt.Errorf("answer for %s from %s: %w", name, server, err)
	}
	if resp.ID != id || resp.RCode != dnsmessage.RCodeSuccess {
		return nil, fmt.Errorf("answer for %s from %s: id %d (sent %d), %s", name, server, resp.ID, id, resp.RCode)
	}
	var out []netip.Addr
	for _, a := range resp.Answers {
		if r, ok := a.Body.(*dnsmessage.AResource); ok {
			out = append(out, netip.AddrFrom4(r.A))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no A record in the answer")
	}
	return out, nil
}
