// Package check reads the manifests of examples/kubernetes as the API server
// would: strictly, into the Kubernetes API types, so that a misspelt or
// misplaced field is an error rather than a setting silently dropped. Its
// tests check the manifests offline, and run the DaemonSet's container under
// podman as its pod template says (podman.go).
//
// It is a Go module of its own, so that bpfsup's go.mod does not carry the
// Kubernetes API; it uses the checkout it sits in (a replace directive) for
// bpfsup's configuration parser and test helpers.
package check

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// scheme knows the kinds the manifests may hold.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strict decodes YAML or JSON into the scheme's types and refuses unknown
// and duplicate fields.
var strict = serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

// Decode decodes every document of a multi-document YAML file strictly.
// An error names the file and the document's position in it.
func Decode(path string) ([]runtime.Object, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return DecodeBytes(path, data)
}

// DecodeBytes is Decode of data read from the file named name.
func DecodeBytes(name string, data []byte) ([]runtime.Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, gvk, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if gvk.Kind == "" {
			return nil, fmt.Errorf("%s: document %d: no kind", name, i)
		}
		objs = append(objs, obj)
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("%s: no objects", name)
	}
	return objs, nil
}

// Example is the DaemonSet example: bpfsup-xdp.yaml's ConfigMap and
// DaemonSet, and bpfsup-down.yaml's Job.
type Example struct {
	ConfigMap *corev1.ConfigMap
	DaemonSet *appsv1.DaemonSet
	Down      *batchv1.Job
}

// LoadExample decodes the example's manifests from dir: one ConfigMap and one
// DaemonSet in bpfsup-xdp.yaml, one Job in bpfsup-down.yaml, and nothing else.
func LoadExample(dir string) (*Example, error) {
	var ex Example
	for _, file := range []string{"bpfsup-xdp.yaml", "bpfsup-down.yaml"} {
		objs, err := Decode(dir + "/" + file)
		if err != nil {
			return nil, err
		}
		for _, obj := range objs {
			if err := ex.add(obj); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
		}
	}
	switch {
	case ex.ConfigMap == nil:
		return nil, errors.New("bpfsup-xdp.yaml: no ConfigMap")
	case ex.DaemonSet == nil:
		return nil, errors.New("bpfsup-xdp.yaml: no DaemonSet")
	case ex.Down == nil:
		return nil, errors.New("bpfsup-down.yaml: no Job")
	}
	return &ex, nil
}

func (ex *Example) add(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		if ex.ConfigMap != nil {
			return fmt.Errorf("a second ConfigMap, %s", o.Name)
		}
		ex.ConfigMap = o
	case *appsv1.DaemonSet:
		if ex.DaemonSet != nil {
			return fmt.Errorf("a second DaemonSet, %s", o.Name)
		}
		ex.DaemonSet = o
	case *batchv1.Job:
		if ex.Down != nil {
			return fmt.Errorf("a second Job, %s", o.Name)
		}
		ex.Down = o
	default:
		return fmt.Errorf("unexpected %T", obj)
	}
	return nil
}
