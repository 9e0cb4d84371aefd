//! [`Config`]: how a kernel is launched (grid, block, dynamic shared memory, cluster,
//! programmatic dependent launch), and the `cuLaunchKernelEx` attributes it becomes. Plain data:
//! the launch itself is in the parent module.

use cudarc::driver::sys::{self, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue};

/// Dynamic shared memory a kernel may use without raising its limit.
pub(crate) const DEFAULT_DYN_SMEM: u32 = 48 * 1024;
/// The most dynamic shared memory one block may use on sm_90 (227 KiB).
pub(crate) const MAX_DYN_SMEM: u32 = 232_448;

/// How one kernel is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Config {
    /// Blocks per grid dimension.
    pub(crate) grid: (u32, u32, u32),
    /// Threads per block dimension.
    pub(crate) block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes (at most [`MAX_DYN_SMEM`]).
    pub(crate) dyn_smem: u32,
    /// Thread-block cluster dimensions (each must divide the grid's), if any.
    pub(crate) cluster: Option<(u32, u32, u32)>,
    /// Programmatic dependent launch: the kernel may start before the previous one on the
    /// stream finished (it must then `griddepcontrol.wait` before reading that one's output).
    pub(crate) pdl: bool,
}

impl Config {
    /// A one-dimensional grid of `grid` blocks of `block` threads, nothing else.
    pub(crate) fn plain(grid: u32, block: u32) -> Self {
        Config {
            grid: (grid, 1, 1),
            block: (block, 1, 1),
            dyn_smem: 0,
            cluster: None,
            pdl: false,
        }
    }

    /// Asserts what the driver would otherwise reject at launch (a bug of this crate).
    pub(super) fn validate(&self) {
        let dims = [self.grid.0, self.grid.1, self.grid.2, self.block.0, self.block.1, self.block.2];
        assert!(dims.iter().all(|&d| d >= 1), "moe-cuda bug: empty launch {self:?}");
        assert!(
            self.dyn_smem <= MAX_DYN_SMEM,
            "moe-cuda bug: {} B of dynamic shared memory",
            self.dyn_smem
        );
        if let Some((x, y, z)) = self.cluster {
            assert!(
                x >= 1 && y >= 1 && z >= 1 && self.grid.0 % x == 0 && self.grid.1 % y == 0 && self.grid.2 % z == 0,
                "moe-cuda bug: cluster {:?} does not divide grid {:?}",
                self.cluster,
                self.grid
            );
        }
    }

    /// The `cuLaunchKernelEx` attributes this configuration needs (cluster, PDL).
    pub(super) fn attributes(&self) -> Vec<CUlaunchAttribute> {
        let mut attrs = Vec::new();
        if let Some((x, y, z)) = self.cluster {
            let mut value = CUlaunchAttributeValue { pad: [0; 64] };
            value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y, z };
            attrs.push(CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value,
            });
        }
        if self.pdl {
            let mut value = CUlaunchAttributeValue { pad: [0; 64] };
            value.programmaticStreamSerializationAllowed = 1;
            attrs.push(CUlaunchAttribute {
                id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            });
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_config_has_no_attributes() {
        let c = Config::plain(7, 128);
        c.validate();
        assert!(c.attributes().is_empty());
    }

    #[test]
    fn cluster_and_pdl_become_launch_attributes() {
        let c = Config {
            grid: (132, 2, 1),
            block: (384, 1, 1),
            dyn_smem: MAX_DYN_SMEM,
            cluster: Some((2, 1, 1)),
            pdl: true,
        };
        c.validate();
        let attrs = c.attributes();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].id, CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION);
        // SAFETY: the attribute with this id was built from the `clusterDim` member.
        let d = unsafe { attrs[0].value.clusterDim };
        assert_eq!((d.x, d.y, d.z), (2, 1, 1));
        assert_eq!(
            attrs[1].id,
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        );
        // SAFETY: the attribute with this id was built from this `int` member.
        assert_eq!(unsafe { attrs[1].value.programmaticStreamSerializationAllowed }, 1);
    }

    #[test]
    #[should_panic(expected = "does not divide grid")]
    fn a_cluster_must_divide_the_grid() {
        let mut c = Config::plain(133, 128);
        c.cluster = Some((2, 1, 1));
        c.validate();
    }

    #[test]
    #[should_panic(expected = "dynamic shared memory")]
    fn dynamic_shared_memory_is_bounded() {
        let mut c = Config::plain(1, 128);
        c.dyn_smem = MAX_DYN_SMEM + 1;
        c.validate();
    }
}
