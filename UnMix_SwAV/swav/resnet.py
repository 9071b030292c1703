"""SwAV ResNets (upstream ``src/resnet50.py``), with upstream module names, init and forward.

Both upstream variants live here, chosen by ``cifar_stem``:

* ImageNet (``cifar_stem=False``, upstream SwAV): ``ConstantPad2d(1)`` + 7x7/2 conv with padding 2
  (3 pixels in total, as torchvision) + 3x3/2 maxpool.
* CIFAR (``cifar_stem=True``, Un-Mix ``for_CIFAR``): ``ConstantPad2d(1)`` + 3x3/1 conv with padding 1 and
  no maxpool. The extra zero padding is an upstream quirk kept on purpose (32x32 input -> 34x34 stem
  maps -> 5x5 layer4 maps), because the published CIFAR numbers were produced with it.

The state_dict keys are exactly upstream's (``conv1``, ``bn1``, ``layer{1..4}``, ``projection_head.{0,1,3}``,
``prototypes`` or ``prototypes{i}``), so upstream checkpoints load with ``strict=True``. The CIFAR
"resnet18" is upstream's Bottleneck [2, 2, 2, 2] network (2048-d features), not the BasicBlock ResNet-18.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Kept for completeness (upstream defines it; no shipped constructor uses it)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: the stride sits on the 3x3 conv."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MultiPrototypes(nn.Module):
    """Several prototype heads ``prototypes0``, ``prototypes1``, ...; returns a list of score matrices."""

    def __init__(self, output_dim, nmb_prototypes):
        super().__init__()
        self.nmb_heads = len(nmb_prototypes)
        for i, k in enumerate(nmb_prototypes):
            self.add_module("prototypes" + str(i), nn.Linear(output_dim, k, bias=False))

    def forward(self, x):
        return [getattr(self, "prototypes" + str(i))(x) for i in range(self.nmb_heads)]


class ResNet(nn.Module):
    def __init__(self, block, layers, zero_init_residual=False, groups=1, widen=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, normalize=False, output_dim=0,
                 hidden_mlp=0, nmb_prototypes=0, eval_mode=False, cifar_stem=False):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.eval_mode = eval_mode
        self.cifar_stem = cifar_stem
        self.padding = nn.ConstantPad2d(1, 0.0)

        self.inplanes = width_per_group * widen
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, got "
                             f"{replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group

        num_out_filters = width_per_group * widen
        if cifar_stem:
            # Un-Mix for_CIFAR: 3x3/1 conv, no maxpool (with the extra ConstantPad2d above: 34x34 maps)
            self.conv1 = nn.Conv2d(3, num_out_filters, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = None
        else:
            # upstream SwAV: pad 1 + 7x7/2 conv with padding 2 (= torchvision's padding 3) + maxpool
            self.conv1 = nn.Conv2d(3, num_out_filters, kernel_size=7, stride=2, padding=2, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = norm_layer(num_out_filters)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_out_filters, layers[0])
        num_out_filters *= 2
        self.layer2 = self._make_layer(block, num_out_filters, layers[1], stride=2,
                                       dilate=replace_stride_with_dilation[0])
        num_out_filters *= 2
        self.layer3 = self._make_layer(block, num_out_filters, layers[2], stride=2,
                                       dilate=replace_stride_with_dilation[1])
        num_out_filters *= 2
        self.layer4 = self._make_layer(block, num_out_filters, layers[3], stride=2,
                                       dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

        self.l2norm = normalize
        feat = num_out_filters * block.expansion
        if output_dim == 0:
            self.projection_head = None
        elif hidden_mlp == 0:
            self.projection_head = nn.Linear(feat, output_dim)
        else:
            self.projection_head = nn.Sequential(
                nn.Linear(feat, hidden_mlp), nn.BatchNorm1d(hidden_mlp), nn.ReLU(inplace=True),
                nn.Linear(hidden_mlp, output_dim))

        self.prototypes = None
        if isinstance(nmb_prototypes, (list, tuple)):
            self.prototypes = MultiPrototypes(output_dim, nmb_prototypes)
        elif nmb_prototypes > 0:
            self.prototypes = nn.Linear(output_dim, nmb_prototypes, bias=False)

        # upstream init: kaiming for convs, (1, 0) for BN2d/GroupNorm; Linear and BN1d keep defaults
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    @property
    def num_features(self):
        """Channels of the backbone output (2048 * widen for Bottleneck networks)."""
        return self.layer4[-1].conv3.out_channels if hasattr(self.layer4[-1], "conv3") \
            else self.layer4[-1].conv2.out_channels

    def forward_backbone(self, x):
        x = self.padding(x)
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.eval_mode:
            return x
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, x):
        if self.projection_head is not None:
            x = self.projection_head(x)
        if self.l2norm:
            x = F.normalize(x, dim=1, p=2)
        if self.prototypes is not None:
            return x, self.prototypes(x)
        return x

    def forward(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        # group consecutive crops of the same resolution: one backbone pass (one BN batch) per group
        sizes = torch.tensor([inp.shape[-1] for inp in inputs])
        idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        device = self.conv1.weight.device  # upstream: .cuda(non_blocking=True)
        start_idx, output = 0, None
        for end_idx in idx_crops:
            batch = torch.cat(inputs[start_idx:end_idx]).to(device, non_blocking=True)
            out = self.forward_backbone(batch)
            output = out if output is None else torch.cat((output, out))
            start_idx = end_idx
        return self.forward_head(output)


def resnet18(**kwargs):
    """Un-Mix for_CIFAR's "resnet18": Bottleneck [2, 2, 2, 2], 2048-d features."""
    return ResNet(Bottleneck, [2, 2, 2, 2], **kwargs)


def resnet50(**kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet50w2(**kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=2, **kwargs)


def resnet50w4(**kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=4, **kwargs)


def resnet50w5(**kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=5, **kwargs)


ARCHS = {"resnet18": resnet18, "resnet50": resnet50, "resnet50w2": resnet50w2,
         "resnet50w4": resnet50w4, "resnet50w5": resnet50w5}


def build(arch, **kwargs):
    """``ARCHS[arch](**kwargs)``; raises ``KeyError`` naming the choices for an unknown arch."""
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](**kwargs)
