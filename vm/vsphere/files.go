package vsphere

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// skipTypes are file kinds a migration does not copy: logs, statistics, swap and crash files
// that the destination makes afresh.
var skipTypes = map[string]bool{
	string(types.VirtualMachineFileLayoutExFileTypeLog):        true,
	string(types.VirtualMachineFileLayoutExFileTypeStat):       true,
	string(types.VirtualMachineFileLayoutExFileTypeSwap):       true,
	string(types.VirtualMachineFileLayoutExFileTypeUwswap):     true,
	string(types.VirtualMachineFileLayoutExFileTypeCore):       true,
	string(types.VirtualMachineFileLayoutExFileTypeScreenshot): true,
}

// Files lists the VM's files from vSphere's file layout: Dir is the VM's directory as a
// datastore path ("[datastore1] virtuoso-<id>"), Names are relative to it, disks first (their
// descriptors, then their extents), then
// the configuration, NVRAM, suspend and snapshot files. Logs, swap and the like are left out.
// A file outside the directory (a disk added by hand elsewhere) is an error: the VM would not
// move whole.
func (d *Driver) Files(ctx context.Context, id vm.ID) (vm.Files, error) {
	v, err := d.find(ctx, id)
	if err != nil {
		return vm.Files{}, fmt.Errorf("files of vm %s: %w", id, err)
	}
	m, err := d.props(ctx, v, "config.files.vmPathName", "layoutEx.file")
	if err != nil {
		return vm.Files{}, fmt.Errorf("files of vm %s: %w", id, err)
	}
	if m.Config == nil {
		return vm.Files{}, fmt.Errorf("files of vm %s: %w: no configuration", id, vm.ErrHypervisor)
	}
	var vmx object.DatastorePath
	if !vmx.FromString(m.Config.Files.VmPathName) {
		return vm.Files{}, fmt.Errorf("files of vm %s: %w: bad path %q", id, vm.ErrHypervisor, m.Config.Files.VmPathName)
	}
	dir := object.DatastorePath{Datastore: vmx.Datastore, Path: path.Dir(vmx.Path)}
	rel := func(p string) (string, error) {
		var f object.DatastorePath
		if !f.FromString(p) || f.Datastore != dir.Datastore || !strings.HasPrefix(f.Path, dir.Path+"/") {
			return "", fmt.Errorf("files of vm %s: %w: %s is outside %s", id, vm.ErrHypervisor, p, dir)
		}
		return strings.TrimPrefix(f.Path, dir.Path+"/"), nil
	}
	var descriptors, extents, rest []string
	seen := map[string]bool{}
	add := func(list *[]string, name string) {
		if !seen[name] {
			seen[name] = true
			*list = append(*list, name)
		}
	}
	if m.LayoutEx != nil {
		for _, f := range m.LayoutEx.File {
			if skipTypes[f.Type] {
				continue
			}
			name, err := rel(f.Name)
			if err != nil {
				return vm.Files{}, err
			}
			switch f.Type {
			case string(types.VirtualMachineFileLayoutExFileTypeDiskDescriptor):
				add(&descriptors, name)
			case string(types.VirtualMachineFileLayoutExFileTypeDiskExtent):
				add(&extents, name)
			default:
				add(&rest, name)
			}
		}
	}
	vmxName, err := rel(vmx.String())
	if err != nil {
		return vm.Files{}, err
	}
	if !seen[vmxName] {
		rest = append([]string{vmxName}, rest...)
	}
	return vm.Files{Dir: dir.String(), Names: slices.Concat(descriptors, extents, rest)}, nil
}
