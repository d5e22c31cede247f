// TensorRT IPluginV3 wrapper around the CUDA kernels in fused_refine_kernel.cu (thin on purpose:
// shapes, types and fields here; the math lives in the kernel).
#include "fused_refine_plugin.h"

#include "fused_refine_kernel.h"

#include <cstring>
#include <exception>

using namespace nvinfer1;

namespace hamedge {
namespace {
constexpr char const* kName = "FusedRefine";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "hamedge";

int toKernelType(DataType t) {
    switch (t) {
        case DataType::kFLOAT: return HAMEDGE_F32;
        case DataType::kHALF: return HAMEDGE_F16;
        default: return -1;
    }
}
}  // namespace

FusedRefinePlugin::FusedRefinePlugin(int32_t H, int32_t W, float gain, float center, float zeroRange)
    : mH(H), mW(W), mGain(gain), mCenter(center), mZeroRange(zeroRange) {
    buildFields();
}

void FusedRefinePlugin::buildFields() {
    mFields = {PluginField("H", &mH, PluginFieldType::kINT32, 1),
               PluginField("W", &mW, PluginFieldType::kINT32, 1),
               PluginField("gain", &mGain, PluginFieldType::kFLOAT32, 1),
               PluginField("center", &mCenter, PluginFieldType::kFLOAT32, 1),
               PluginField("zero_range", &mZeroRange, PluginFieldType::kFLOAT32, 1)};
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* FusedRefinePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    switch (type) {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* FusedRefinePlugin::clone() noexcept {
    try {
        return new FusedRefinePlugin(mH, mW, mGain, mCenter, mZeroRange);
    } catch (std::exception const&) {
        return nullptr;
    }
}

char const* FusedRefinePlugin::getPluginName() const noexcept { return kName; }
char const* FusedRefinePlugin::getPluginVersion() const noexcept { return kVersion; }
char const* FusedRefinePlugin::getPluginNamespace() const noexcept { return kNamespace; }

int32_t FusedRefinePlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                           DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
    return (nbInputs == 1 && nbOutputs == 1 && in[0].desc.dims.nbDims == 4) ? 0 : -1;
}

int32_t FusedRefinePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                              DataType const* inputTypes, int32_t nbInputs) const noexcept {
    if (nbInputs != 1 || nbOutputs != 1) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t FusedRefinePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                           DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/,
                                           DimsExprs* outputs, int32_t nbOutputs,
                                           IExprBuilder& exprBuilder) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
    outputs[0].nbDims = 4;
    outputs[0].d[0] = inputs[0].d[0];  // batch: dynamic
    outputs[0].d[1] = inputs[0].d[1];  // maps
    outputs[0].d[2] = exprBuilder.constant(mH);
    outputs[0].d[3] = exprBuilder.constant(mW);
    return 0;
}

bool FusedRefinePlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                  int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    return d.type == inOut[0].desc.type;
}

int32_t FusedRefinePlugin::getNbOutputs() const noexcept { return 1; }

size_t FusedRefinePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
                                           DynamicPluginTensorDesc const* /*outputs*/,
                                           int32_t /*nbOutputs*/) const noexcept {
    Dims const& mx = inputs[0].max;  // largest batch of the optimisation profile
    return hamedge_fused_refine_workspace(static_cast<int>(mx.d[0] * mx.d[1]));
}

int32_t FusedRefinePlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                         PluginTensorDesc const* out, int32_t nbOutputs) noexcept {
    return (nbInputs == 1 && nbOutputs == 1 && in[0].dims.nbDims == 4 && out[0].dims.d[2] == mH
            && out[0].dims.d[3] == mW) ? 0 : -1;
}

int32_t FusedRefinePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                   void const* const* inputs, void* const* outputs, void* workspace,
                                   cudaStream_t stream) noexcept {
    Dims const& d = inputDesc[0].dims;
    int const nMaps = static_cast<int>(d.d[0] * d.d[1]);
    int const inType = toKernelType(inputDesc[0].type);
    int const outType = toKernelType(outputDesc[0].type);
    if (inType < 0 || outType < 0) return -1;
    int const err = hamedge_fused_refine(inputs[0], inType, outputs[0], outType, nMaps,
                                         static_cast<int>(d.d[2]), static_cast<int>(d.d[3]), mH, mW,
                                         mGain, mCenter, mZeroRange, workspace, stream);
    return err == 0 ? 0 : -1;
}

IPluginV3* FusedRefinePlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept { return clone(); }

PluginFieldCollection const* FusedRefinePlugin::getFieldsToSerialize() noexcept { return &mFieldCollection; }

// ---- creator ----------------------------------------------------------------------------------
FusedRefinePluginCreator::FusedRefinePluginCreator() {
    mFieldNames = {PluginField("H", nullptr, PluginFieldType::kINT32, 1),
                   PluginField("W", nullptr, PluginFieldType::kINT32, 1),
                   PluginField("gain", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("center", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("zero_range", nullptr, PluginFieldType::kFLOAT32, 1)};
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* FusedRefinePluginCreator::getPluginName() const noexcept { return kName; }
char const* FusedRefinePluginCreator::getPluginVersion() const noexcept { return kVersion; }
char const* FusedRefinePluginCreator::getPluginNamespace() const noexcept { return kNamespace; }
PluginFieldCollection const* FusedRefinePluginCreator::getFieldNames() noexcept { return &mFieldCollection; }

IPluginV3* FusedRefinePluginCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* fc,
                                                  TensorRTPhase /*phase*/) noexcept {
    try {
        int32_t H = -1, W = -1;
        float gain = 100.0f, center = 0.4f, zeroRange = 1e-5f;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            if (f.data == nullptr || f.length < 1) continue;
            // The ONNX parser hands over node attributes as fields: ints as INT32, floats as
            // FLOAT32; other attributes (aot, plugin_namespace, ...) are ignored here.
            auto asFloat = [&f](float fallback) {
                if (f.type == PluginFieldType::kFLOAT32) return *static_cast<float const*>(f.data);
                if (f.type == PluginFieldType::kFLOAT64) return static_cast<float>(*static_cast<double const*>(f.data));
                return fallback;
            };
            auto asInt = [&f](int32_t fallback) {
                if (f.type == PluginFieldType::kINT32) return *static_cast<int32_t const*>(f.data);
                if (f.type == PluginFieldType::kINT64) return static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
                return fallback;
            };
            if (!std::strcmp(f.name, "H")) H = asInt(H);
            else if (!std::strcmp(f.name, "W")) W = asInt(W);
            else if (!std::strcmp(f.name, "gain")) gain = asFloat(gain);
            else if (!std::strcmp(f.name, "center")) center = asFloat(center);
            else if (!std::strcmp(f.name, "zero_range")) zeroRange = asFloat(zeroRange);
        }
        if (H < 1 || W < 1) return nullptr;  // H and W are required
        return new FusedRefinePlugin(H, W, gain, center, zeroRange);
    } catch (std::exception const&) {
        return nullptr;
    }
}

}  // namespace hamedge

// Entry point for trtexec --dynamicPlugins / IPluginRegistry::loadLibrary.
extern "C" TENSORRTAPI IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static hamedge::FusedRefinePluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
