"""The HAM network (Ouyang et al., IEEE TMI 2021) built from a ModelSpec.

Module and parameter names follow the reference repository's, so its state dicts load with no
renaming beyond the wrapper prefixes (see hamedge.model.checkpoint). Two details of the reference
that differ from torchvision and are kept on purpose: the first block of a dilated stage already
uses that stage's dilation, and a BasicBlock's second convolution is never dilated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hamedge.kernels.torch_refine import refine_maps_torch
from hamedge.spec import ARCHITECTURES, ModelSpec


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups, bias=False,
                     dilation=dilation)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, 1, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class FABlock(nn.Module):
    """Foreground attention: channel attention pooled by a softmax map, then position attention."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = conv1x1(channels, 1)
        self.channel_fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
        )
        self.conv2 = conv1x1(channels, channels)
        self.conv3 = conv1x1(channels, 1)
        self.conv4 = conv3x3(1, 1)
        self.bn4 = nn.BatchNorm2d(1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        # Channel attention: softmax over positions weights the pooling of x into a C-vector.
        weights = torch.softmax(self.conv1(x).flatten(2), dim=-1)  # (B, 1, HW)
        pooled = torch.matmul(x.flatten(2), weights.transpose(1, 2)).view(b, c)
        channel = torch.sigmoid(self.channel_fc(pooled)).view(b, c, 1, 1)
        xc = self.conv2(x) * channel
        # Position attention on a single projected map.
        m = self.conv3(xc)
        m = m * torch.sigmoid(self.bn4(self.conv4(m)))
        return self.gamma * m + x


class FAModule(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conva = nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout))
        self.fa = FABlock(cout)
        self.convb = nn.Sequential(conv3x3(cout, cout), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convb(self.fa(self.conva(x)))


class HAMOutput(NamedTuple):
    """The reference forward's six outputs, in its order. Logits, not probabilities."""

    anomaly_logit: torch.Tensor  # (B, 1)
    class_logits: torch.Tensor  # (B, K)
    anomaly_map: torch.Tensor | None  # (B, 1, H, W) refined, None when refine=False
    class_maps: torch.Tensor | None  # (B, K, H, W) refined, None when refine=False
    anomaly_cam: torch.Tensor  # (B, 1, h, w) raw: ReLU of the anomaly weights applied to F
    class_cams: torch.Tensor  # (B, K, h, w) raw

    def graph_outputs(self, refined: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exported graph's three outputs in torch: class_probs (B, K), anomaly_prob (B, 1)
        and attention_maps, anomaly first: the raw CAMs (B, 1+K, h, w), or with ``refined`` the
        refined maps (B, 1+K, H, W) of a forward run with refine=True."""
        if refined:
            if self.anomaly_map is None or self.class_maps is None:
                raise ValueError("refined maps asked for, but the forward ran with refine=False")
            maps = torch.cat((self.anomaly_map, self.class_maps), dim=1)
        else:
            maps = torch.cat((self.anomaly_cam, self.class_cams), dim=1)
        return torch.sigmoid(self.class_logits), torch.sigmoid(self.anomaly_logit), maps


def lse_pool(features: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling over all positions: (B, C, h, w) -> (B, C)."""
    h, w = features.shape[-2:]
    return (torch.logsumexp(r * features.flatten(2), dim=2) - math.log(h * w)) / r


class HAM(nn.Module):
    """ResNet backbone + foreground attention + classification head + LSE pooling + CAMs."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        block_name, layers, groups, width = ARCHITECTURES[spec.arch]
        block = Bottleneck if block_name == "bottleneck" else BasicBlock
        self.groups, self.base_width = groups, width
        self.inplanes = 64
        self.conv1 = nn.Conv2d(spec.in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if spec.keep_maxpool else nn.Identity()
        strides, dilations = spec.stage_strides, spec.stage_dilations
        self.layer1 = self._make_stage(block, 64, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_stage(block, 128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_stage(block, 256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_stage(block, 512, layers[3], strides[3], dilations[3])
        features = 512 * block.expansion
        inner = features // 4
        self.fa_layer = FAModule(features, inner)
        self.cls_head = nn.Sequential(conv3x3(features + inner, 512), nn.BatchNorm2d(512), nn.ReLU(),
                                      nn.Dropout2d(0.1))
        self.anomaly_fc = nn.Linear(512, 1, bias=False)
        self.cls_fc = nn.Linear(512, spec.num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        del self.inplanes

    def _make_stage(self, block: type, planes: int, blocks: int, stride: int,
                    dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, self.groups, self.base_width,
                                dilation))
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input (B, C, H, W) -> classification features F (B, 512, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.cls_head(torch.cat((x, self.fa_layer(x)), dim=1))

    def forward(self, x: torch.Tensor, refine: bool = True) -> HAMOutput:
        feats = self.features(x)
        pooled = lse_pool(feats, self.spec.lse_r)
        anomaly_logit = self.anomaly_fc(pooled)
        class_logits = self.cls_fc(pooled)
        # CAMs use the detached classifier weights, as in the reference: the maps do not train
        # the classifier, the classifier only projects the features.
        anomaly_cam = F.relu(F.conv2d(feats, self.anomaly_fc.weight.detach()[:, :, None, None]))
        class_cams = F.relu(F.conv2d(feats, self.cls_fc.weight.detach()[:, :, None, None]))
        anomaly_map = class_maps = None
        if refine:
            size = (x.shape[-2], x.shape[-1])
            anomaly_map = self.refine(anomaly_cam, size)
            class_maps = self.refine(class_cams, size)
        return HAMOutput(anomaly_logit, class_logits, anomaly_map, class_maps, anomaly_cam,
                         class_cams)

    def refine(self, cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return refine_maps_torch(cams, size, self.spec.cam_gain, self.spec.cam_center)


def build_model(spec: ModelSpec) -> HAM:
    """The registry entry point: a HAM for this spec, with freshly initialised weights."""
    return HAM(spec)


def random_model(spec: ModelSpec, seed: int = 0) -> HAM:
    """A HAM of ``spec`` with seeded random weights and random BatchNorm statistics, so its
    activations and outputs are not degenerate: for speed measurements and tests, where the
    weights do not matter but all-zero running statistics would."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model
