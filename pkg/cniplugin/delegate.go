package cniplugin

import (
	"context"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

// ExecDelegate runs IPAM plugins found in CNI_PATH, as the spec describes
// for delegation.
type ExecDelegate struct{}

func (ExecDelegate) Add(ctx context.Context, p string, stdin []byte) (types.Result, error) {
	return invoke.DelegateAdd(ctx, p, stdin, nil)
}
func (ExecDelegate) Check(ctx context.Context, p string, stdin []byte) error {
	return invoke.DelegateCheck(ctx, p, stdin, nil)
}
func (ExecDelegate) Del(ctx context.Context, p string, stdin []byte) error {
	return invoke.DelegateDel(ctx, p, stdin, nil)
}
func (ExecDelegate) Status(ctx context.Context, p string, stdin []byte) error {
	return invoke.DelegateStatus(ctx, p, stdin, nil)
}
func (ExecDelegate) GC(ctx context.Context, p string, stdin []byte) error {
	return invoke.DelegateGC(ctx, p, stdin, nil)
}
