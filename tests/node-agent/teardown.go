package main

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// teardownWait bounds how long a pod object's deletion waits for the node to finish
// with the pod.
const teardownWait = 30 * time.Second

// orderedPods is the pod client virtual-kubelet's pod controller uses: its deletion of a
// pod object (which it forces once the grace period is over) waits until this node has
// stopped the pod's containers and run CNI DEL, so the object never disappears before
// the pod has, as with a kubelet.
type orderedPods struct {
	corev1client.PodsGetter
	p **provider
}

func (o orderedPods) Pods(namespace string) corev1client.PodInterface {
	return orderedPodInterface{PodInterface: o.PodsGetter.Pods(namespace), p: *o.p, namespace: namespace}
}

type orderedPodInterface struct {
	corev1client.PodInterface
	p         *provider
	namespace string
}

func (o orderedPodInterface) Delete(ctx context.Context, name string, options metav1.DeleteOptions) error {
	if r := o.p.lookup(o.namespace, name); r != nil {
		select {
		case <-r.done:
		case <-ctx.Done():
		case <-time.After(teardownWait):
		}
	}
	return o.PodInterface.Delete(ctx, name, options)
}
