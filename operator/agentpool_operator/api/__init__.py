"""The AgentPool API (`agentpool.dev/v1alpha1`): pydantic models, quantities, conditions, and
the AgentBudget resource (`budget.py`).

Pure: no Kubernetes client, no I/O. `agentpool_tools.crd` generates the CRD from these
models; the operator parses live objects with `AgentPoolSpec.model_validate(spec)`.
"""

from agentpool_operator.api.autoscaling import (
    AutoscalingSpec,
    ScaleDownRules,
    ScaleUpRules,
    ScalingPolicy,
)
from agentpool_operator.api.budget import (
    BUDGET_KIND,
    BUDGET_PLURAL,
    AgentBudgetSpec,
    AgentBudgetStatus,
    BudgetKey,
    BudgetKeyStatus,
    BudgetReference,
    BudgetSharing,
)
from agentpool_operator.api.conditions import (
    Condition,
    ConditionType,
    Reason,
    find_condition,
    remove_condition,
    set_condition,
)
from agentpool_operator.api.models import (
    AgentPoolSpec,
    CacheSpec,
    DatabaseRetentionSpec,
    DatabaseSpec,
    DatabaseTimeoutsSpec,
    MonitoringSpec,
    PgBouncerExporterSpec,
    PgBouncerSpec,
    QueueSpec,
    TracingSpec,
    WorkersSpec,
)
from agentpool_operator.api.pod import PodOverrides, ResourceRequirements
from agentpool_operator.api.quantity import Quantity, QuantityError, parse_quantity
from agentpool_operator.api.status import AgentPoolStatus

GROUP = "agentpool.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentPool"
PLURAL = "agentpools"
SINGULAR = "agentpool"
SHORT_NAMES = ("ap", "apool")
CATEGORIES = ("agentpool", "all")

__all__ = [
    "API_VERSION",
    "BUDGET_KIND",
    "BUDGET_PLURAL",
    "CATEGORIES",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "AgentBudgetSpec",
    "AgentBudgetStatus",
    "AgentPoolSpec",
    "AgentPoolStatus",
    "AutoscalingSpec",
    "BudgetKey",
    "BudgetKeyStatus",
    "BudgetReference",
    "BudgetSharing",
    "CacheSpec",
    "Condition",
    "ConditionType",
    "DatabaseRetentionSpec",
    "DatabaseSpec",
    "DatabaseTimeoutsSpec",
    "MonitoringSpec",
    "PgBouncerExporterSpec",
    "PgBouncerSpec",
    "PodOverrides",
    "Quantity",
    "QuantityError",
    "QueueSpec",
    "Reason",
    "ResourceRequirements",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingPolicy",
    "TracingSpec",
    "WorkersSpec",
    "find_condition",
    "parse_quantity",
    "remove_condition",
    "set_condition",
]
