# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cloud modules' option that tells their cleanup whether the bake's earlier calls made anything."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  created:
    description:
      - For V(cleanup), whether this bake's earlier calls for the target may have made anything (their results'
        RV(created)). With V(false), a cleanup that cannot even list the resources (credentials refused, a region
        or project that does not exist) says that the target created nothing, instead of failing.
    type: bool
    default: true
"""
