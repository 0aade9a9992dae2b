package nodeagent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// apiSources reads volume and environment sources from the API server with
// the node's credentials, and keeps the service account tokens it
// requested until they need refreshing.
type apiSources struct {
	client kubernetes.Interface
	tokens *tokenCache
}

func (s apiSources) configMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	return s.client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (s apiSources) secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return s.client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (s apiSources) token(ctx context.Context, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) ([]byte, error) {
	return s.tokens.get(ctx, s.client, pod, p)
}

// tokenCache holds the tokens requested for the node's pods, as kubelet's
// token manager does: a token is requested again once 80% of its life
// has passed or it is a day old.
type tokenCache struct {
	mu     sync.Mutex
	tokens map[string]cachedToken
	now    func() time.Time
}

type cachedToken struct {
	token           []byte
	issued, expires time.Time
	pod             types.UID
}

func newTokenCache() *tokenCache {
	return &tokenCache{tokens: map[string]cachedToken{}, now: time.Now}
}

// defaultTokenExpiration is the API's default expirationSeconds of a
// serviceAccountToken projection.
const defaultTokenExpiration = 3600

func serviceAccountOf(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// needsRefresh is kubelet's rule (pkg/kubelet/token): expired, older than
// a day, or past 80% of its life.
func needsRefresh(now time.Time, t cachedToken) bool {
	if !now.Before(t.expires) || now.Sub(t.issued) > 24*time.Hour {
		return true
	}
	return now.After(t.issued.Add(t.expires.Sub(t.issued) * 8 / 10))
}

func (c *tokenCache) get(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, p *corev1.ServiceAccountTokenProjection) ([]byte, error) {
	exp := int64(defaultTokenExpiration)
	if p.ExpirationSeconds != nil {
		exp = *p.ExpirationSeconds
	}
	sa := serviceAccountOf(pod)
	key := strings.Join([]string{string(pod.UID), sa, p.Audience, fmt.Sprint(exp)}, "/")
	c.mu.Lock()
	t, ok := c.tokens[key]
	c.mu.Unlock()
	now := c.now()
	if ok && !needsRefresh(now, t) {
		return t.token, nil
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}
	if p.Audience != "" {
		req.Spec.Audiences = []string{p.Audience}
	}
	res, err := client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request a token of service account %s/%s for pod %s: %w", pod.Namespace, sa, pod.Name, err)
	}
	t = cachedToken{token: []byte(res.Status.Token), issued: now, expires: res.Status.ExpirationTimestamp.Time, pod: pod.UID}
	c.mu.Lock()
	c.tokens[key] = t
	c.mu.Unlock()
	return t.token, nil
}

// forget drops the tokens of a pod that is gone.
func (c *tokenCache) forget(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, t := range c.tokens {
		if t.pod == uid {
			delete(c.tokens, k)
		}
	}
}
